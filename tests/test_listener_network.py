"""What hospital networks and other senders do to the listener (issue 19).

Each case goes through the real socket path: a raw socket client, DCMTK's
storescu or pynetdicom, sometimes through :class:`tests.tcp_proxy.SplittingProxy`
(a PDU header split in two TCP segments with a pause between, as a
retransmission on a lossy link does). Every case ends with the FAULTS
invariants (:meth:`NodeUnderTest.assert_healthy`).
"""

from __future__ import annotations

import copy
import logging
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from daemon.cli.common import setup_logging
from daemon.db.models import AuditEvent
from daemon.intake.intake_header import read_intake_header
from daemon.log_repeats import RepeatFilter
from tests.conftest import require_tool
from tests.factories import make_mr_series, write_series
from tests.listener_harness import (  # noqa: F401 - fixtures
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    MR_STORAGE,
    P_DATA,
    SUCCESS,
    VERIFICATION,
    NodeUnderTest,
    RawClient,
    associate_rq,
    dataset_part,
    encode_dataset,
    fixture_make_node,
    fixture_node,
    mr_instance,
    pdata,
    pdu,
    scu_store,
    store_rq,
    un_undefined_sequence,
)
from tests.tcp_proxy import SplittingProxy

HELD_BACK_SECONDS = 0.6  # > the 0.25 s stop poll that used to be a read deadline


def abort_reason(client: RawClient, timeout: float = 5.0) -> int:
    """Read until the node's A-ABORT; its reason byte."""
    pdu_type, body = client.read_pdu(timeout)
    while pdu_type == P_DATA:
        pdu_type, body = client.read_pdu(timeout)
    assert pdu_type == ABORT, f"PDU type {pdu_type} instead of an A-ABORT"
    return body[3]


def ac_context_items(client: RawClient) -> dict[int, tuple[int, list[str]]]:
    """Send nothing; parse the A-ASSOCIATE-AC already read into context id -> (result, TS)."""
    body = bytes(client.received[6:])
    out: dict[int, tuple[int, list[str]]] = {}
    pos = 68
    while pos + 4 <= len(body):
        item_type, _, length = struct.unpack_from(">BBH", body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if item_type == 0x21:
            syntaxes, sub = [], 4
            while sub + 4 <= len(value):
                sub_type, _, sub_len = struct.unpack_from(">BBH", value, sub)
                if sub_type == 0x40:
                    syntaxes.append(value[sub + 4 : sub + 4 + sub_len].decode())
                sub += 4 + sub_len
            out[value[0]] = (value[2], syntaxes)
        pos += 4 + length
    return out


# -- 1. a PDU header in two TCP segments ------------------------------------------------
@pytest.mark.parametrize("split_at", [1, 2, 5])
def test_pdu_header_split_with_a_pause_is_read_whole(node: NodeUnderTest, split_at: int) -> None:
    ds = mr_instance()
    with SplittingProxy(node.port, pause=HELD_BACK_SECONDS, split_at=split_at) as proxy:
        with RawClient(proxy.port, timeout=10) as client:
            assert client.associate().established  # A-ASSOCIATE-RQ split
            status = client.c_store(encode_dataset(ds), MR_STORAGE, ds.SOPInstanceUID)
            assert status == SUCCESS  # P-DATA PDUs split, inside a transfer
            assert client.release()
        assert proxy.pdus_split >= 3  # request, command, data set (the release may race)
    assert [r.sop_instance_uid for r in node.rows()] == [ds.SOPInstanceUID]
    node.assert_healthy()


@pytest.mark.dcmtk
def test_storescu_through_a_link_that_holds_back_header_segments(node: NodeUnderTest) -> None:
    storescu = require_tool("storescu")
    files = write_series(make_mr_series(n_slices=3, rows=32, cols=32), node.inputs / "mr")
    with SplittingProxy(node.port, pause=HELD_BACK_SECONDS) as proxy:
        result = subprocess.run(
            [storescu, "-aec", "KI67NODE", "127.0.0.1", str(proxy.port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert len(node.rows()) == 3
    for path in files:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        stored = node.read_published(str(sent.SOPInstanceUID))
        assert dataset_part(stored) == dataset_part(path.read_bytes())
    node.assert_healthy()


def test_a_begun_pdu_that_stops_arriving_is_aborted_after_the_network_timeout(
    node: NodeUnderTest,
) -> None:
    ds = mr_instance()
    with RawClient(node.port, timeout=10) as client:
        assert client.associate().established
        client.send_store_command(3, MR_STORAGE, ds.SOPInstanceUID)
        started = time.monotonic()
        client.send(pdata(3, 0x02, encode_dataset(ds))[:3])  # half a header, then silence
        assert abort_reason(client, timeout=10) == 0  # A-ABORT, reason not specified
        waited = time.monotonic() - started
    assert 1.5 <= waited <= 5.0, waited  # the 2 s network timeout, not the 0.25 s poll
    assert node.rows() == []
    node.assert_healthy()


# -- 2. identical re-sends are kept once --------------------------------------------
@pytest.fixture(name="resend")
def fixture_resend(node: NodeUnderTest) -> Callable[..., int]:
    """``resend(ds, implicit=False, calling_ae=...)``: one C-STORE in its own association."""

    def send(ds: pydicom.Dataset, *, transfer: str = ExplicitVRLittleEndian, ae: str) -> int:
        data = (
            encode_dataset(ds, implicit=transfer == ImplicitVRLittleEndian)
            if transfer in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
            else encode_dataset(ds)
        )
        with RawClient(node.port) as client:
            assert client.associate([(3, MR_STORAGE, (transfer,))], calling_ae=ae).established
            status = client.c_store(data, MR_STORAGE, ds.SOPInstanceUID)
            client.release()
        return status

    return send


def test_same_instance_from_another_ae_in_another_syntax_is_kept_once(
    node: NodeUnderTest, resend: Callable[..., int]
) -> None:
    ds = mr_instance()
    assert resend(ds, ae="MODALITY") == SUCCESS
    first = node.read_published(ds.SOPInstanceUID)
    assert resend(ds, ae="PACS", transfer=ImplicitVRLittleEndian) == SUCCESS
    assert resend(ds, ae="ROUTER") == SUCCESS  # same syntax, only the file meta differs
    assert len(node.rows()) == 1 and node.quarantined() == set()
    assert node.read_published(ds.SOPInstanceUID) == first  # the first copy is the one kept
    assert "instance_quarantined" not in [e.kind for e in node.rows(AuditEvent)]
    node.assert_healthy()


def test_same_instance_compressed_losslessly_is_kept_once(node: NodeUnderTest) -> None:
    (ds,) = make_mr_series(n_slices=1, rows=32, cols=32)
    plain = write_series([ds], node.inputs / "plain")
    rle = copy.deepcopy(ds)
    rle.compress(RLELossless, generate_instance_uid=False)
    compressed = write_series([rle], node.inputs / "rle")
    assert scu_store(node.port, plain, calling_ae="MODALITY") == [SUCCESS]
    assert scu_store(node.port, compressed, calling_ae="PACS") == [SUCCESS]
    (row,) = node.rows()
    assert row.transfer_syntax_uid == ExplicitVRLittleEndian
    assert node.quarantined() == set()
    node.assert_healthy()


@pytest.mark.parametrize("change", ["lossy-pixels", "other-value"])
def test_a_different_data_set_under_the_same_uid_is_still_quarantined(
    node: NodeUnderTest, change: str
) -> None:
    (ds,) = make_mr_series(n_slices=1, rows=64, cols=64)
    other = copy.deepcopy(ds)
    if change == "lossy-pixels":
        other.compress(JPEG2000, j2k_cr=[40], generate_instance_uid=False)
    else:
        other.SeriesDescription = "edited after the first send"
    first = write_series([ds], node.inputs / "first")
    second = write_series([other], node.inputs / "second")
    assert scu_store(node.port, first) == [SUCCESS]
    assert scu_store(node.port, second, calling_ae="OTHER") == [SUCCESS]
    assert len(node.rows()) == 1
    assert len(node.quarantined()) == 1
    node.assert_healthy()


# -- 3. lossless before lossy ----------------------------------------------------------
def test_lossless_is_chosen_over_a_lossy_syntax_proposed_first(node: NodeUnderTest) -> None:
    contexts = [
        (1, MR_STORAGE, (JPEGBaseline8Bit, JPEG2000, ExplicitVRLittleEndian)),
        (3, MR_STORAGE, (JPEGBaseline8Bit, JPEGLSLossless, ImplicitVRLittleEndian)),
        (5, MR_STORAGE, (JPEGBaseline8Bit,)),  # nothing else offered: lossy accepted
    ]
    with RawClient(node.port) as client:
        negotiation = client.associate(contexts)
        client.release()
    assert negotiation.accepted == {
        1: ExplicitVRLittleEndian,
        3: JPEGLSLossless,
        5: JPEGBaseline8Bit,
    }
    node.assert_healthy()


@pytest.mark.dcmtk
def test_storescu_offering_jpeg_baseline_and_uncompressed_stores_uncompressed(
    node: NodeUnderTest,
) -> None:
    storescu = require_tool("storescu")
    files = write_series(make_mr_series(n_slices=3, rows=32, cols=32), node.inputs / "mr")
    result = subprocess.run(
        [storescu, "+C", "-xy", "-aec", "KI67NODE", "127.0.0.1", str(node.port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = node.rows()
    assert len(rows) == 3
    assert {r.transfer_syntax_uid for r in rows} == {ExplicitVRLittleEndian}
    node.assert_healthy()


# -- 4. CP-246: a private sequence as UN with undefined length -----------------------------
def test_un_sequence_of_undefined_length_is_stored(node: NodeUnderTest) -> None:
    ds = mr_instance()
    data = encode_dataset(ds)
    # insert the private group after the last element of group 0008 (tags stay ascending)
    cut = data.index(struct.pack("<HH", 0x0010, 0x0010))
    data = data[:cut] + un_undefined_sequence() + data[cut:]
    with RawClient(node.port) as client:
        assert client.associate().established
        assert client.c_store(data, MR_STORAGE, ds.SOPInstanceUID) == SUCCESS
        client.release()
    stored = node.read_published(ds.SOPInstanceUID)
    assert dataset_part(stored) == data
    (row,) = node.rows()
    read = pydicom.dcmread(node.spool.path_of(row.path))
    sequence = read[0x00091001]
    assert sequence.VR == "SQ" and read[0x00091001].value[0][0x00091002].value == b"ABCD"
    node.assert_healthy()


# -- 5. the smaller points ------------------------------------------------------------
def test_rejected_contexts_carry_a_transfer_syntax_sub_item(node: NodeUnderTest) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    contexts = [
        (1, VERIFICATION, (ImplicitVRLittleEndian,)),
        (3, "1.2.3.4.5.6", (ExplicitVRLittleEndian,)),  # unknown abstract syntax
        (5, MR_STORAGE, ("1.2.3.999",)),  # unknown transfer syntax
        (7, ct, (ExplicitVRLittleEndian,)),
    ]
    with RawClient(node.port) as client:
        assert client.associate(contexts).established
        items = ac_context_items(client)
        client.release()
    assert items[1] == (0, [ImplicitVRLittleEndian])
    assert items[3] == (3, [ExplicitVRLittleEndian])
    assert items[5] == (4, ["1.2.3.999"])
    for _result, syntaxes in items.values():
        assert len(syntaxes) == 1, "every context item has one transfer syntax sub-item"
    node.assert_healthy()


def test_association_request_must_arrive_within_the_acse_timeout(
    make_node: Callable[..., NodeUnderTest],
) -> None:
    node = make_node(node__acse_timeout_seconds=1.0, node__network_timeout_seconds=6.0)
    request = associate_rq()
    with RawClient(node.port, timeout=10) as client:
        started = time.monotonic()
        client.send(request[:20])  # the header and a little: the rest never comes
        assert client.wait_closed(10.0)
        waited = time.monotonic() - started
    assert waited < 3.0, f"negotiation took {waited:.1f} s, the ACSE timeout is 1 s"
    node.assert_healthy()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("unknown-pdu-type", 1), ("associate-rq-inside", 2), ("pdv-length-wrong", 6)],
)
def test_abort_reason_names_the_protocol_error(node: NodeUnderTest, name: str, reason: int) -> None:
    with RawClient(node.port) as client:
        assert client.associate().established
        if name == "unknown-pdu-type":
            client.send(pdu(0x09, b"\x00" * 4))
        elif name == "associate-rq-inside":
            client.send(associate_rq())
        else:
            body = struct.pack(">LBB", 200, 3, 0x03) + store_rq(1, MR_STORAGE, "1.2.3")
            client.send(pdu(P_DATA, body))
        assert abort_reason(client) == reason
    node.assert_healthy()


def test_even_presentation_context_id_is_served(node: NodeUnderTest) -> None:
    ds = mr_instance()
    with RawClient(node.port) as client:
        negotiation = client.associate([(2, VERIFICATION, (ImplicitVRLittleEndian,)),
                                        (4, MR_STORAGE, (ExplicitVRLittleEndian,))])  # fmt: skip
        assert negotiation.established and negotiation.accepted[4] == ExplicitVRLittleEndian
        assert client.c_echo(context_id=2) == SUCCESS
        assert client.c_store(encode_dataset(ds), MR_STORAGE, ds.SOPInstanceUID, context_id=4) == (
            SUCCESS
        )
        client.release()
    assert len(node.rows()) == 1
    node.assert_healthy()


@pytest.mark.parametrize("required", [False, True])
def test_called_ae_title_is_checked_when_required(
    make_node: Callable[..., NodeUnderTest], required: bool
) -> None:
    node = make_node(node__require_called_aet=required)
    with RawClient(node.port) as client:
        wrong = client.associate(called_ae="SOMEONE_ELSE")
    with RawClient(node.port) as client:
        right = client.associate(called_ae="KI67NODE")
        client.release()
    assert right.established
    if required:
        assert wrong.pdu_type == ASSOCIATE_RJ and wrong.reject == (1, 1, 7)
    else:
        assert wrong.pdu_type == ASSOCIATE_AC
    node.assert_healthy()


@pytest.fixture(name="pydicom_repeats_held_back")
def fixture_pydicom_repeats_held_back() -> Iterator[None]:
    logger = logging.getLogger("pydicom")
    before = list(logger.filters)
    setup_logging("INFO")  # what every command (serve, workers) does at start
    yield
    for added in [f for f in logger.filters if f not in before]:
        logger.removeFilter(added)


@pytest.mark.usefixtures("pydicom_repeats_held_back")
def test_unknown_character_set_is_logged_once(
    node: NodeUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    series = make_mr_series(n_slices=4, rows=16, cols=16)
    for ds in series:
        ds.SpecificCharacterSet = "ISO_IR 999"
    files = write_series(series, node.inputs / "charset")
    with caplog.at_level(logging.WARNING):
        assert scu_store(node.port, files) == [SUCCESS] * 4
        for path in files:  # what the worker does later: read every text value
            read_intake_header(path)
            ds = pydicom.dcmread(path)
            str(ds.PatientName), str(ds.SeriesDescription)
    unknown = [r for r in caplog.records if "ISO_IR 999" in r.getMessage()]
    assert len(unknown) == 1, [r.getMessage() for r in unknown]
    assert len(node.rows()) == 4
    node.assert_healthy()


def test_repeat_filter_passes_again_after_its_window_with_a_count() -> None:
    flt = RepeatFilter(window_seconds=0.05)
    record = logging.LogRecord("pydicom", logging.WARNING, __file__, 1, "odd %s", ("x",), None)
    assert flt.filter(record)
    assert not flt.filter(logging.makeLogRecord(record.__dict__))
    assert not flt.filter(logging.makeLogRecord(record.__dict__))
    time.sleep(0.06)
    again = logging.makeLogRecord({**record.__dict__, "msg": "odd %s", "args": ("x",)})
    assert flt.filter(again)
    assert again.getMessage() == "odd x (and 2 more like it since)"
