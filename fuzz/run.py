"""Run the fuzz targets for a bounded time (CI: ``make fuzz``).

    python fuzz/run.py [--seconds 50] [--target pdu --target dataset] [--jobs 2] [--keep]
                       [-- extra libFuzzer flags]

Each target (``fuzz/fuzz_<target>.py``) runs under libFuzzer (atheris) in its
own process, the targets side by side (``--jobs``), for ``--seconds`` each,
starting from the committed seeds in ``fuzz/corpus/<target>/``. New inputs,
logs and crash artifacts go to a temp folder (under /dev/shm where there is
one), never into the repository; it is removed after a clean run.

Exit status 0: no finding. 1: a finding; the reproducer's path, its bytes
(base64) and the command that replays it are printed, and the folder is kept.
2: a target did not run or did not stop (its log is printed).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("pdu", "dataset")
MAX_INPUT_BYTES = 65_536
STOP_GRACE_SECONDS = 60  # start-up (imports, instrumentation) and the final statistics
PRINTED_REPRODUCER_BYTES = 16_384
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")


@dataclass
class Run:
    """One target's libFuzzer process and where it writes."""

    target: str
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    corpus: Path = field(init=False)
    artifacts: Path = field(init=False)
    hung: bool = False
    wall_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.log = self.folder / "fuzz.log"
        self.corpus = self.folder / "corpus"
        self.artifacts = self.folder / "artifacts"
        for path in (self.corpus, self.artifacts):
            path.mkdir(parents=True)

    def command(self, seconds: int, args: argparse.Namespace) -> list[str]:
        script = REPO / "fuzz" / f"fuzz_{self.target}.py"
        return [
            sys.executable,
            str(script),
            str(self.corpus),  # first folder: where libFuzzer adds new inputs
            str(REPO / "fuzz" / "corpus" / self.target),
            f"-max_total_time={seconds}",
            f"-rss_limit_mb={args.rss_limit_mb}",
            f"-timeout={args.timeout}",
            f"-max_len={MAX_INPUT_BYTES}",
            f"-dict={REPO / 'fuzz' / f'{self.target}.dict'}",
            f"-artifact_prefix={self.artifacts}/",
            "-print_final_stats=1",
            *args.libfuzzer,
        ]

    def findings(self) -> list[Path]:
        return sorted(p for p in self.artifacts.iterdir() if p.is_file())

    def summary(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        stats = dict(_STAT.findall(text))
        statuses = _STATUS.findall(text)
        runs, cov, ft, corp, size = statuses[-1] if statuses else ("?",) * 5
        return (
            f"{self.target}: {stats.get('number_of_executed_units', runs)} runs, "
            f"{stats.get('average_exec_per_sec', '?')} exec/s, cov {cov}, ft {ft}, "
            f"corpus {corp} inputs ({size}), new {stats.get('new_units_added', '?')}, "
            f"peak RSS {stats.get('peak_rss_mb', '?')} MB, {self.wall_seconds:.0f} s"
        )


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=50, help="fuzzing time per target")
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: all")
    parser.add_argument("--jobs", type=int, default=2, help="targets run at the same time")
    parser.add_argument("--rss-limit-mb", type=int, default=1024)
    parser.add_argument("--timeout", type=int, default=10, help="seconds for one input")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("libfuzzer", nargs="*", help="after --: more libFuzzer flags")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.jobs < 1:
        parser.error("--seconds and --jobs must be at least 1")
    return args


def _start(run: Run, seconds: int, args: argparse.Namespace) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(run.folder)  # the dataset target's scratch file
    with run.log.open("wb") as log:
        run.process = subprocess.Popen(
            run.command(seconds, args),
            cwd=run.folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one if it hangs
        )


def _wait(run: Run, deadline: float) -> None:
    assert run.process is not None
    try:
        run.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        run.hung = True
        os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait()


def _report_finding(run: Run, reproducer: Path) -> None:
    text = run.log.read_text(errors="replace")
    start = max(text.find("=== Uncaught Python exception"), text.find("==ERROR"), 0)
    print(f"\nFINDING in {run.target}: {reproducer}", flush=True)
    print(text[start:][:8000].rstrip())
    data = reproducer.read_bytes()
    if len(data) <= PRINTED_REPRODUCER_BYTES:
        print(f"reproducer ({len(data)} bytes, base64): {base64.b64encode(data).decode()}")
    print(
        f"replay: PYTHONPATH={REPO} {sys.executable} {REPO / 'fuzz' / f'fuzz_{run.target}.py'} "
        f"{reproducer}\nthen add it to tests/test_fuzz_regressions.py"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("atheris") is None:
        print("atheris is not installed: pip install -e '.[dev]' (Linux x86-64)", file=sys.stderr)
        return 2
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    workdir = Path(tempfile.mkdtemp(prefix="ki67node-fuzz-", dir=base))
    runs = [Run(t, workdir / t) for t in (args.target or TARGETS)]
    print(f"fuzzing {', '.join(r.target for r in runs)} for {args.seconds} s each in {workdir}")
    pending = list(runs)
    while pending:
        batch, pending = pending[: args.jobs], pending[args.jobs :]
        started = time.monotonic()
        for run in batch:
            _start(run, args.seconds, args)
        deadline = started + args.seconds + STOP_GRACE_SECONDS
        for run in batch:
            _wait(run, deadline)
            run.wall_seconds = time.monotonic() - started
    status = 0
    for run in runs:
        print(run.summary())
    for run in runs:
        assert run.process is not None
        found = run.findings()
        for reproducer in found:
            _report_finding(run, reproducer)
        if found:
            status = 1
        elif run.hung or run.process.returncode != 0:
            why = "did not stop" if run.hung else f"exited {run.process.returncode}"
            print(f"\n{run.target} {why} without a reproducer; its log:", flush=True)
            print(run.log.read_text(errors="replace")[-8000:])
            status = max(status, 2)
    if status or args.keep:
        print(f"\nkept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
