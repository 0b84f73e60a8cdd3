"""What the fuzz targets share: the contract-violation error, the allocation
bound, and the atheris entry point.

The targets' ``check(data)`` functions are plain Python (the regression tests
replay inputs through them without atheris); only :func:`fuzz_main` imports
atheris.
"""

from __future__ import annotations

import gc
import logging
import sys
import tracemalloc
import types
import warnings
import zlib
from collections.abc import Callable

# One input in this many (picked by its CRC-32, so a replay measures the same
# inputs) runs under tracemalloc: tracing every input would cost a factor 3 in speed.
MEASURE_ONE_IN = 8


class ContractViolation(Exception):
    """A target's contract was broken: a finding (any unexpected exception is one too)."""


def measured(data: bytes) -> bool:
    """Whether ``check`` bounds the allocations of this input (see MEASURE_ONE_IN)."""
    return zlib.crc32(data) % MEASURE_ONE_IN == 0


def allocation_peak(fn: Callable[[bytes], object], data: bytes) -> int:
    """Bytes allocated at the peak of ``fn(data)`` above what was allocated before it.

    Measured with tracemalloc, started and stopped around the call unless it
    is tracing already.
    """
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        fn(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    return peak - before


def require(condition: bool, what: str) -> None:
    """Raise :class:`ContractViolation` with ``what`` unless ``condition`` holds."""
    if not condition:
        raise ContractViolation(what)


def _instrument(atheris: types.ModuleType, packages: tuple[str, ...]) -> int:
    """Coverage instrumentation for every function already loaded from ``packages``.

    ``atheris.instrument_imports`` only sees modules imported after it; the
    targets import the code under test at the top (so that ``check`` works
    without atheris), so their functions are patched here instead.
    """
    count = 0
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType):
            continue
        module = getattr(obj, "__module__", None) or ""
        if any(module == p or module.startswith(p + ".") for p in packages):
            atheris.instrument_func(obj)
            count += 1
    return count


def fuzz_main(check: Callable[[bytes], None], packages: tuple[str, ...]) -> None:
    """Run ``check`` under libFuzzer (command-line arguments are libFuzzer's)."""
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install -e '.[dev]' (Linux x86-64 wheels)")
    logging.disable(logging.CRITICAL)  # the code under test logs every rejected input
    warnings.simplefilter("ignore")
    count = _instrument(atheris, packages)
    print(f"INFO: instrumented {count} functions of {', '.join(packages)}", file=sys.stderr)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
