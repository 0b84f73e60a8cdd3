"""The listener's happy paths with real peers: pynetdicom and DCMTK.

What is sent is stored byte for byte (the dataset part after the File Meta
group), rows and series counts are written, the negotiated transfer syntaxes
and storage classes follow the configuration. Every test ends with the FAULTS
invariants (:meth:`NodeUnderTest.assert_healthy`).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)
from sqlalchemy import select

from daemon.db.models import Instance, Series
from tests.conftest import require_tool
from tests.factories import make_mr_series, write_series
from tests.listener_harness import (  # noqa: F401 - fixtures
    SUCCESS,
    VERIFICATION,
    NodeUnderTest,
    RawClient,
    dataset_part,
    encode_dataset,
    fixture_make_node,
    fixture_node,
    mr_instance,
    scu_echo,
    scu_store,
)

PC_ACCEPT = 0
PC_ABSTRACT_NOT_SUPPORTED = 3
PC_TRANSFER_NOT_SUPPORTED = 4


def assert_stored_as_sent(node: NodeUnderTest, files: list[Path], transfer_syntax: str) -> None:
    """Every sent file is published once, same dataset bytes, same transfer syntax."""
    rows = {r.sop_instance_uid: r for r in node.rows()}
    for path in files:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        row = rows[str(sent.SOPInstanceUID)]
        assert row.transfer_syntax_uid == transfer_syntax
        stored = node.spool.path_of(row.path).read_bytes()
        assert dataset_part(stored) == dataset_part(path.read_bytes()), path.name
        meta = pydicom.dcmread(node.spool.path_of(row.path), stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == transfer_syntax
        assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID


def series_row(node: NodeUnderTest, series_uid: str) -> Any:
    with node.engine.connect() as conn:
        return conn.execute(select(Series).where(Series.series_uid == series_uid)).one()


def test_echo_with_pynetdicom(node: NodeUnderTest) -> None:
    assert scu_echo(node.port) == SUCCESS
    node.assert_healthy()


@pytest.mark.dcmtk
def test_echo_with_dcmtk_echoscu(node: NodeUnderTest) -> None:
    echoscu = require_tool("echoscu")
    result = subprocess.run(
        [echoscu, "-aet", "ECHOSCU", "-aec", "KI67NODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    node.assert_healthy()


def test_store_series_with_pynetdicom(node: NodeUnderTest) -> None:
    series = make_mr_series(n_slices=8)
    files = write_series(series, node.inputs / "mr")
    assert scu_store(node.port, files) == [SUCCESS] * 8
    assert len(node.rows()) == 8
    assert_stored_as_sent(node, files, ExplicitVRLittleEndian)
    row = series_row(node, str(series[0].SeriesInstanceUID))
    assert (row.instance_count, row.state, row.modality) == (8, "receiving", "MR")
    assert set(node.stored_series) == {row.id}
    assert {r.calling_aet for r in node.rows()} == {"PYSCU"}
    node.assert_healthy()


DCMTK_VARIANTS = [
    # (compressor, storescu option, transfer syntax stored)
    (None, "-xe", ExplicitVRLittleEndian),
    ("dcmcjpeg", "-xs", JPEGLosslessSV1),
    ("dcmcjpls", "-xt", JPEGLSLossless),
    ("dcmcrle", "-xr", RLELossless),
]


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("compressor", "option", "transfer_syntax"),
    DCMTK_VARIANTS,
    ids=["uncompressed", "jpeg-lossless", "jpeg-ls", "rle"],
)
def test_store_series_with_dcmtk_storescu(
    node: NodeUnderTest, compressor: str | None, option: str, transfer_syntax: str
) -> None:
    storescu = require_tool("storescu")
    series = make_mr_series(n_slices=4)
    files = write_series(series, node.inputs / "plain")
    if compressor is not None:
        tool = require_tool(compressor)
        out = node.inputs / "compressed"
        out.mkdir()
        for path in files:
            subprocess.run([tool, str(path), str(out / path.name)], check=True, timeout=60)
        files = sorted(out.iterdir())
    assert all(pydicom.dcmread(f).file_meta.TransferSyntaxUID == transfer_syntax for f in files)
    result = subprocess.run(
        [storescu, option, "-aec", "KI67NODE", "127.0.0.1", str(node.port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(node.rows()) == 4
    assert_stored_as_sent(node, files, transfer_syntax)
    assert series_row(node, str(series[0].SeriesInstanceUID)).instance_count == 4
    node.assert_healthy()


def test_store_jpeg2000_with_pynetdicom(node: NodeUnderTest) -> None:
    series = make_mr_series(n_slices=3)
    for ds in series:
        ds.compress(JPEG2000Lossless)
    files = write_series(series, node.inputs / "j2k")
    assert scu_store(node.port, files) == [SUCCESS] * 3
    assert_stored_as_sent(node, files, JPEG2000Lossless)
    node.assert_healthy()


def test_store_enhanced_mr(node: NodeUnderTest) -> None:
    (ds,) = make_mr_series(n_slices=6, enhanced=True)
    files = write_series([ds], node.inputs / "enhanced")
    assert scu_store(node.port, files) == [SUCCESS]
    assert_stored_as_sent(node, files, ExplicitVRLittleEndian)
    assert node.rows()[0].sop_class_uid == EnhancedMRImageStorage
    row = series_row(node, str(ds.SeriesInstanceUID))
    assert (row.instance_count, row.expected_count) == (1, 1)
    node.assert_healthy()


@pytest.mark.parametrize(
    ("proposed", "result", "accepted"),
    [
        ([DeflatedExplicitVRLittleEndian], PC_TRANSFER_NOT_SUPPORTED, None),
        (
            [DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian],
            PC_ACCEPT,
            ExplicitVRLittleEndian,
        ),
        ([JPEG2000Lossless, ImplicitVRLittleEndian], PC_ACCEPT, JPEG2000Lossless),
        (["1.2.840.10008.1.2.4.100"], PC_TRANSFER_NOT_SUPPORTED, None),  # MPEG2: not decodable
    ],
    ids=["deflate-only-refused", "deflate-falls-back", "j2k-first-choice", "mpeg2-refused"],
)
def test_transfer_syntax_negotiation(
    node: NodeUnderTest, proposed: list[str], result: int, accepted: str | None
) -> None:
    with RawClient(node.port) as client:
        negotiation = client.associate(
            [(1, VERIFICATION, [ImplicitVRLittleEndian]), (3, MRImageStorage, proposed)]
        )
        assert negotiation.established
        assert negotiation.results[3] == result
        assert negotiation.accepted.get(3) == accepted
        client.release()
    node.assert_healthy()


@pytest.mark.parametrize(
    ("policy", "result"),
    [("ignore", PC_ACCEPT), ("refuse", PC_ABSTRACT_NOT_SUPPORTED)],
    ids=["ignore-stores", "refuse-rejects-context"],
)
def test_storage_class_we_do_not_process(
    make_node: Callable[..., NodeUnderTest], policy: str, result: int
) -> None:
    node = make_node(node__other_storage=policy)
    ds = mr_instance(Modality="CT")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    with RawClient(node.port) as client:
        negotiation = client.associate([(5, CTImageStorage, [ExplicitVRLittleEndian])])
        assert negotiation.results[5] == result
        if result == PC_ACCEPT:
            status = client.c_store(
                encode_dataset(ds), CTImageStorage, ds.SOPInstanceUID, context_id=5
            )
            assert status == SUCCESS
        client.release()
    rows = node.rows()
    if policy == "ignore":
        assert [(r.sop_instance_uid, r.sop_class_uid) for r in rows] == [
            (ds.SOPInstanceUID, CTImageStorage)
        ]
        assert series_row(node, str(ds.SeriesInstanceUID)).modality == "CT"
    else:
        assert rows == []
    node.assert_healthy()


def test_parallel_associations(make_node: Callable[..., NodeUnderTest]) -> None:
    node = make_node(node__max_associations=4)
    senders = 4
    series = [make_mr_series(n_slices=6) for _ in range(senders)]
    files = [write_series(s, node.inputs / f"s{i}") for i, s in enumerate(series)]
    results: dict[int, list[int | None]] = {}
    start = threading.Barrier(senders)

    def send(i: int) -> None:
        start.wait()
        results[i] = scu_store(node.port, files[i], calling_ae=f"SENDER{i}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: [SUCCESS] * 6 for i in range(senders)}
    with node.engine.connect() as conn:
        counts = conn.execute(select(Series.series_uid, Series.instance_count)).all()
        aets = set(conn.execute(select(Instance.calling_aet)).scalars())
    assert sorted(counts) == sorted((str(s[0].SeriesInstanceUID), 6) for s in series)
    assert aets == {f"SENDER{i}" for i in range(senders)}
    for i in range(senders):
        assert_stored_as_sent(node, files[i], ExplicitVRLittleEndian)
    node.assert_healthy()
