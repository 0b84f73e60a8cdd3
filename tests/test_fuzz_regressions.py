"""The fuzz targets' contracts without atheris (``fuzz/``, ``make fuzz``).

Every committed seed (``fuzz/corpus/``) is replayed through the target's
``check`` with the allocation bound and cross-checks on, so a parser change
that breaks the contract on real traffic fails here, not only under the
fuzzer. Inputs the fuzzer found are kept below as regression tests, fed to
the function that failed, with the error it documents.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.dicom.dimse import decode_command
from daemon.dicom.ul_pdu import ProtocolError, iter_pdvs, parse_associate_rq
from daemon.intake.dataset_check import scan_file
from fuzz import fuzz_dataset, fuzz_pdu
from fuzz.engine import allocation_peak

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
PDU_SEEDS = sorted((CORPUS / "pdu").iterdir())
DATASET_SEEDS = sorted((CORPUS / "dataset").iterdir())
NEAR_4_GIB = 0xFFFFFFF0
SLACK_BYTES = 64 * 1024


def test_corpus_is_there() -> None:
    assert len(PDU_SEEDS) >= 20 and len(DATASET_SEEDS) >= 10, "run fuzz/make_corpus.py"


@pytest.mark.parametrize("seed", PDU_SEEDS, ids=lambda p: p.name)
def test_pdu_seed_holds_the_contract(seed: Path) -> None:
    fuzz_pdu.check(seed.read_bytes(), measure=True)


@pytest.mark.parametrize("seed", DATASET_SEEDS, ids=lambda p: p.name)
def test_dataset_seed_holds_the_contract(seed: Path) -> None:
    fuzz_dataset.check(seed.read_bytes(), measure=True)


@pytest.mark.parametrize("fault", list(fuzz_pdu.Fault), ids=lambda f: f.name.lower())
def test_storage_faults_keep_the_contract(fault: fuzz_pdu.Fault) -> None:
    """A recorded C-STORE stream with each fault the target injects (by its last byte)."""
    (stream,) = (CORPUS / "pdu").glob("storescu-stream-*.bin")
    data = stream.read_bytes()
    fuzz_pdu.check(
        data[:-1] + bytes([data[-1] - data[-1] % len(fuzz_pdu.Fault) + fault]), measure=True
    )


def test_dataset_seeds_are_what_the_node_decided(tmp_path: Path) -> None:
    """The seeds are real traffic: the node kept each one, and refused the ``deep-`` ones."""
    for seed in DATASET_SEEDS:
        content, _ = fuzz_dataset.file_bytes(seed.read_bytes())
        path = tmp_path / "seed.dcm"
        path.write_bytes(content)
        problem = scan_file(path).problem
        if seed.name.startswith("deep-"):
            assert "nested deeper" in (problem or ""), seed.name
        else:
            assert problem is None, seed.name


# -- lengths the peer claims allocate nothing --------------------------------------------------
def _pdv(length: int) -> bytes:
    return struct.pack(">LBB", length, 1, 3) + b"\x00" * 8


def _rq_with_item(length: int) -> bytes:
    fixed = struct.pack(">HH", 1, 0) + b"KI67NODE".ljust(16) + b"SCU".ljust(16) + b"\x00" * 32
    return fixed + struct.pack(">BBH", 0x10, 0, length) + b"1.2"


@pytest.mark.parametrize(
    ("parse", "data", "match"),
    [
        (lambda d: list(iter_pdvs(d)), _pdv(NEAR_4_GIB), "PDV item length"),
        (parse_associate_rq, _rq_with_item(0xFFFF), "overruns its parent"),
        (decode_command, struct.pack("<HHL", 0, 0x0100, NEAR_4_GIB), "malformed DIMSE"),
    ],
    ids=["pdv", "associate-rq-item", "command-element"],
)
def test_claimed_length_is_a_protocol_error(
    parse: Callable[[bytes], object], data: bytes, match: str
) -> None:
    def run(raw: bytes) -> None:
        with pytest.raises(ProtocolError, match=match):
            parse(raw)

    assert allocation_peak(run, data) < SLACK_BYTES


def test_claimed_dataset_length_allocates_nothing(tmp_path: Path) -> None:
    element = struct.pack("<HH2sHL", 0x0008, 0x0018, b"UN", 0, NEAR_4_GIB) + b"1.2.3\x00"
    content, _ = fuzz_dataset.file_bytes(fuzz_dataset.seed("explicit", element))
    path = tmp_path / "claims-4-gib.dcm"
    path.write_bytes(content)
    results = []
    peak = allocation_peak(lambda _: results.append(scan_file(path, frozenset({0x00080018}))), b"")
    assert peak < 2 * SLACK_BYTES  # the 64 KiB read buffer, nothing from the length
    assert "past the end" in (results[0].problem or "")
