"""Graceful stop: an instance in flight is finished and answered, then the
association ends with A-ABORT; nothing acknowledged is lost."""

from __future__ import annotations

import threading
import time

from daemon.dicom.dimse_status import Status
from daemon.dicom.ul_pdu import PduType
from tests.listener_harness import (  # noqa: F401 - fixtures
    MR_STORAGE,
    NodeUnderTest,
    RawClient,
    encode_dataset,
    fixture_make_node,
    fixture_node,
    mr_instance,
    pdata,
    status_of,
)


def test_idle_association_is_aborted_promptly_on_stop(node: NodeUnderTest) -> None:
    ds = mr_instance()
    with RawClient(node.port) as client:
        assert client.associate().established
        assert client.c_store(encode_dataset(ds), MR_STORAGE, ds.SOPInstanceUID) == Status.SUCCESS
        started = time.monotonic()
        node.listener.stop(timeout=10.0)
        assert time.monotonic() - started < 3.0
        pdu_type, _ = client.read_pdu(timeout=2.0)
        assert pdu_type == PduType.ABORT
    assert len(node.rows()) == 1
    assert node.temp_files() == []


def test_instance_in_flight_is_finished_before_the_abort(node: NodeUnderTest) -> None:
    ds = mr_instance()
    data = encode_dataset(ds)
    with RawClient(node.port) as client:
        assert client.associate().established
        client.send_store_command(3, MR_STORAGE, ds.SOPInstanceUID, 1)
        half = len(data) // 2
        client.send(pdata(3, 0x00, data[:half]))
        stopper = threading.Thread(target=node.listener.stop, kwargs={"timeout": 10.0})
        stopper.start()
        time.sleep(0.5)  # the node is stopping while the dataset is half sent
        client.send(pdata(3, 0x02, data[half:]))
        assert status_of(client.read_response()) == Status.SUCCESS
        pdu_type, _ = client.read_pdu(timeout=2.0)
        assert pdu_type == PduType.ABORT
        stopper.join(timeout=5)
        assert not stopper.is_alive()
    assert len(node.rows()) == 1
    assert node.temp_files() == []
