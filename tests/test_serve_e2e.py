"""End to end: DCMTK sends studies to a real ``ki67node serve`` process.

A multi-series study (T1C MP-RAGE + distractors, compressed variants) goes
through listener → spool → completeness → filter → job → worker; then the
process is killed mid-study and restarted, stopped with SIGTERM during an
association and during a job, and started by ``make run``. Each check reads
the state on disk and in the database, not only the DICOM statuses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from tests.conftest import free_port, require_tool
from tests.daemon_process import (
    REPO_ROOT,
    DaemonProcess,
    c_echo,
    clean_env,
    dataset_bytes,
    decisions,
    jobs,
    published_files,
    query,
    store_successes,
    stored_instances,
    temp_files,
)
from tests.factories import make_study, write_series

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

CANARY_NAME = "CANARY^PHI"
CANARY_ID = "PHI-CANARY-123"
T1C = "t1c_mprage"
SEND_TIMEOUT_SECONDS = 120.0
SETTLE_TIMEOUT_SECONDS = 180.0  # a full pipeline run while CI runs other tests beside it
# codec per series kind: (DCMTK compressor, storescu option proposing its transfer syntax)
CODECS = {
    "jpeg_ls": ("dcmcjpls", "-xt"),
    "jpeg_lossless": ("dcmcjpeg", "-xs"),
    "rle": ("dcmcrle", "-xr"),
}
STUDY_CODECS = {T1C: "jpeg_ls", "flair_3d": "jpeg_lossless", "dwi": "rle"}


# -- the study on disk and how it is sent ---------------------------------------------
@dataclass
class SentSeries:
    kind: str
    series_uid: str
    files: list[Path]
    storescu_option: str = ""  # proposes the compressed transfer syntax, if any


@dataclass
class SentStudy:
    series: dict[str, SentSeries] = field(default_factory=dict)

    def files(self) -> list[Path]:
        return [f for s in self.series.values() for f in s.files]


def prepare_study(
    folder: Path, codecs: dict[str, str] | None = None, **study_kwargs: Any
) -> SentStudy:
    """Write a canary-PHI study; series named in ``codecs`` are compressed by DCMTK."""
    study = make_study(patient_name=CANARY_NAME, patient_id=CANARY_ID, **study_kwargs)
    out = SentStudy()
    for kind, datasets in study.items():
        files = write_series(datasets, folder / kind)
        option = ""
        codec = (codecs or {}).get(kind)
        if codec is not None:
            tool, option = CODECS[codec]
            require_tool(tool)
            for path in files:
                packed = path.with_suffix(".tmp")
                subprocess.run([tool, str(path), str(packed)], check=True, capture_output=True)
                packed.replace(path)
        out.series[kind] = SentSeries(kind, str(datasets[0].SeriesInstanceUID), files, option)
    return out


@dataclass
class Sender:
    """A running storescu; its ``-v`` log goes to a file (a full pipe would stall it)."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    kind: str

    def wait(self, timeout: float = SEND_TIMEOUT_SECONDS) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        return code, self.log_path.read_text(errors="replace")


def start_storescu(node: DaemonProcess, series: SentSeries) -> Sender:
    cmd = [require_tool("storescu"), "-v", "-aet", "PACS", "-aec", node.ae_title]
    if series.storescu_option:
        cmd.append(series.storescu_option)
    cmd += ["127.0.0.1", str(node.dicom_port), *map(str, series.files)]
    log_path = series.files[0].parent.with_name(f"storescu-{series.kind}-{time.monotonic_ns()}.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=clean_env())
    return Sender(proc, log_path, series.kind)


def outbox_pending(node: DaemonProcess) -> int:
    rows = query(node.data_dir, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
    return int(rows[0][0])


def send(node: DaemonProcess, series: list[SentSeries]) -> set[str]:
    """Send each series on its own association, all at once; files answered Success."""
    senders = [start_storescu(node, s) for s in series]
    ok: set[str] = set()
    for sender in senders:
        code, output = sender.wait()
        assert code == 0, f"storescu {sender.kind} exited {code}:\n{output[-3000:]}"
        ok |= store_successes(output)
    return ok


# -- the database, read while (or after) the daemon runs --------------------------------
def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = SETTLE_TIMEOUT_SECONDS,
    interval: float = 0.2,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def all_decided(node: DaemonProcess, study: SentStudy) -> bool:
    rows = query(node.data_dir, "SELECT series_uid, state FROM series")
    states = dict(rows)
    return all(states.get(s.series_uid) == "decided" for s in study.series.values())


def jobs_settled(node: DaemonProcess) -> bool:
    found = jobs(node.data_dir)
    return bool(found) and all(state in ("done", "failed") for _, state, _, _ in found)


def assert_stored_byte_identical(node: DaemonProcess, files: list[Path]) -> None:
    """Every file has its row; the spool copy's dataset is the sent dataset, byte for byte."""
    stored = stored_instances(node.data_dir)
    spool = node.data_dir / "spool"
    for path in files:
        meta = dcmread(path, stop_before_pixels=True)
        uid = str(meta.SOPInstanceUID)
        assert uid in stored, f"{path} ({uid}) has no instance row"
        relpath, _sha, ts = stored[uid]
        assert ts == str(meta.file_meta.TransferSyntaxUID), f"{path}: stored as {ts}"
        assert dataset_bytes(spool / relpath) == dataset_bytes(path), f"{path}: bytes differ"


def assert_no_duplicates(node: DaemonProcess, n_sent: int) -> None:
    rows = query(node.data_dir, "SELECT count(*), count(DISTINCT sop_instance_uid) FROM instances")
    assert rows[0] == (n_sent, n_sent)
    assert len(published_files(node.data_dir)) == n_sent, (
        "spool files without a row (or rows without a file)"
    )
    assert query(node.data_dir, "SELECT count(*) FROM quarantine") == [(0,)]


# -- fixtures ------------------------------------------------------------------------
@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def factory(**settings: dict[str, Any]) -> DaemonProcess:
        settings.setdefault("logging", {"level": "INFO"})
        node = DaemonProcess(tmp_path / f"node{len(made)}", settings=settings)
        made.append(node)
        return node

    yield factory
    for node in made:
        node.cleanup()


@dataclass
class Processed:
    """One study sent to a fresh node and processed to the end (shared by tests)."""

    node: DaemonProcess
    study: SentStudy
    ok_files: set[str]
    api_status: dict[str, Any]
    cli_status: subprocess.CompletedProcess[str]
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    log: str


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processed]:
    folder = tmp_path_factory.mktemp("e2e-study")
    study = prepare_study(
        folder / "study", STUDY_CODECS, n_slices=64, distractor_slices=5, rows=32, cols=32
    )
    node = DaemonProcess(
        folder / "node",
        settings={
            "ingest": {"series_stable_seconds": 1.0, "sweep_interval_seconds": 0.2},
            "logging": {"level": "INFO"},
        },
    )
    try:
        node.start()
        ok = send(node, list(study.series.values()))
        wait_for("every series decided", lambda: all_decided(node, study))
        wait_for("the job to finish", lambda: jobs_settled(node))
        wait_for("the results delivered", lambda: outbox_pending(node) == 0)
        code, body = node.get("/metrics")
        assert code == 200, body[:300]
        metrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        result = Processed(
            node, study, ok, node.api_status(), node.cli("status", "--json"), metrics, ""
        )
        node.stop()
        result.log = node.all_logs()
        yield result
    finally:
        node.cleanup()


# -- 1. a multi-series study, compressed variants included --------------------------------
def test_every_instance_stored_byte_identical_and_recorded(processed: Processed) -> None:
    files = processed.study.files()
    assert {str(f) for f in files} == processed.ok_files, "storescu saw a non-Success status"
    assert_stored_byte_identical(processed.node, files)
    assert_no_duplicates(processed.node, len(files))
    assert temp_files(processed.node.data_dir) == []


def test_each_series_decided_once_with_a_reason_and_only_t1c_qualifies(
    processed: Processed,
) -> None:
    found = decisions(processed.node.data_dir)
    for kind, series in processed.study.series.items():
        rows = found[series.series_uid]
        assert len(rows) == 1, f"{kind} decided {len(rows)} times: {rows}"
        qualifies, reason = rows[0]
        assert bool(qualifies) is (kind == T1C), f"{kind}: {reason}"
        assert reason.strip(), f"{kind} has no reason"


def test_only_the_t1c_gets_a_job_and_the_worker_finishes_it(processed: Processed) -> None:
    found = jobs(processed.node.data_dir)
    assert [(uid, state) for uid, state, _, _ in found] == [
        (processed.study.series[T1C].series_uid, "done")
    ]
    result = json.loads(found[0][3] or "null")
    assert "load" in result["stages_run"]
    assert result["volume"]["instances"] == len(processed.study.series[T1C].files)
    # the toy study's T1C holds no meningioma: "not assessable", said in an SR, no guess
    assert result["status"] == "not_assessable" and result["prediction"] is None
    assert [o["kind"] for o in result["outputs"]] == ["sr"]
    # no destination configured: the default folder destination <data_dir>/outbox gets it
    delivered = sorted(p.stem for p in (processed.node.data_dir / "outbox").rglob("*.dcm"))
    assert delivered == [result["outputs"][0]["sop_instance_uid"]]


def test_status_api_and_cli_show_the_processed_study(processed: Processed) -> None:
    n_files = len(processed.study.files())
    n_series = len(processed.study.series)
    cli = processed.cli_status
    assert cli.returncode == 0, cli.stderr
    for report in (processed.api_status, json.loads(cli.stdout)):
        assert report["jobs"]["by_state"]["done"] == 1
        assert report["decisions"]["qualifies"] == 1
        assert report["decisions"]["rejected"] == n_series - 1
        assert report["storage"]["instances"] == n_files
        assert report["series"]["by_state"]["decided"] == n_series
        assert CANARY_ID not in json.dumps(report)


def test_metrics_count_what_was_received_and_decided(processed: Processed) -> None:
    m = processed.metrics
    n_files = len(processed.study.files())
    size = sum(
        (processed.node.data_dir / "spool" / rel).stat().st_size
        for rel, _, _ in stored_instances(processed.node.data_dir).values()
    )
    assert m[("ki67node_instances_received_total", ())] == n_files
    assert m[("ki67node_received_bytes_total", ())] == size
    associations = sum(v for (name, _), v in m.items() if name == "ki67node_associations_total")
    assert associations >= len(processed.study.series)
    assert m[("ki67node_jobs", (("state", "done"),))] == 1
    assert m[("ki67node_series_by_decision", (("decision", "qualifies"),))] == 1
    assert any(name == "ki67node_stage_latency_seconds" for name, _ in m)


# -- 3. no patient names or IDs in the log at INFO -----------------------------------------
def assert_no_phi(log: str) -> None:
    for canary in ("CANARY", CANARY_ID, "PHI^CANARY", "PHI-CANARY"):
        assert canary.lower() not in log.lower(), f"{canary!r} found in the daemon log"


def test_log_at_info_has_no_patient_name_or_id(processed: Processed) -> None:
    log = processed.log
    assert " INFO " in log and processed.study.series[T1C].series_uid in log  # it did log
    assert_no_phi(log)


# -- 2. kill -9 in the middle of a study, restart, resend ----------------------------------
def test_kill_9_mid_study_then_resend_loses_nothing_and_decides_once(
    tmp_path: Path, node_factory: Callable[..., DaemonProcess]
) -> None:
    study = prepare_study(
        tmp_path / "study",
        n_slices=400,
        distractor_slices=4,
        rows=64,
        cols=64,
        distractors=("t2_tse", "localizer"),
    )
    node = node_factory(ingest={"series_stable_seconds": 6.0, "sweep_interval_seconds": 0.2})
    node.start()
    distractors = [s for k, s in study.series.items() if k != T1C]
    ok = send(node, distractors)
    wait_for(
        "distractors decided", lambda: len([d for d in decisions(node.data_dir).values() if d]) == 2
    )

    sender = start_storescu(node, study.series[T1C])
    n_before = len(stored_instances(node.data_dir))
    wait_for(
        "part of the T1C stored",
        lambda: len(stored_instances(node.data_dir)) >= n_before + 60,
        interval=0.05,
    )
    node.kill()
    _, output = sender.wait()
    first_run_ok = ok | store_successes(output)
    t1c_ok = {f for f in first_run_ok if "/t1c_mprage/" in f}
    assert 60 <= len(t1c_ok) < len(study.series[T1C].files), "the kill missed the send"
    assert_stored_byte_identical(node, [Path(f) for f in first_run_ok])

    node.start()
    assert temp_files(node.data_dir) == []
    ok_again = send(node, [study.series[T1C], *distractors])
    assert ok_again == {str(f) for f in study.files()}
    wait_for("every series decided", lambda: all_decided(node, study))
    wait_for("the job to finish", lambda: jobs_settled(node))

    assert_stored_byte_identical(node, study.files())
    assert_no_duplicates(node, len(study.files()))
    for kind, series in study.series.items():
        assert len(decisions(node.data_dir)[series.series_uid]) == 1, (
            f"{kind} decided more than once"
        )
    assert [(uid, state) for uid, state, _, _ in jobs(node.data_dir)] == [
        (study.series[T1C].series_uid, "done")
    ]
    node.stop()
    assert temp_files(node.data_dir) == []
    assert_no_phi(node.all_logs())  # crash recovery and duplicates log no PHI either


# -- 4. SIGTERM is graceful -----------------------------------------------------------------
def test_sigterm_during_an_association_exits_0_and_keeps_every_success(
    tmp_path: Path, node_factory: Callable[..., DaemonProcess]
) -> None:
    study = prepare_study(tmp_path / "study", n_slices=400, rows=64, cols=64, distractors=())
    node = node_factory(ingest={"series_stable_seconds": 30.0})
    node.start()
    sender = start_storescu(node, study.series[T1C])
    wait_for(
        "part of the series stored",
        lambda: len(stored_instances(node.data_dir)) >= 40,
        interval=0.05,
    )
    assert sender.proc.poll() is None, "the association ended before SIGTERM"
    node.stop()  # asserts exit 0 within the unit's TimeoutStopSec
    _, output = sender.wait()
    ok = store_successes(output)
    assert len(ok) >= 40
    assert_stored_byte_identical(node, [Path(f) for f in ok])
    assert temp_files(node.data_dir) == []
    node.start()  # and it comes back
    assert node.echo()


def test_sigterm_during_a_job_requeues_or_finishes_it(
    tmp_path: Path, node_factory: Callable[..., DaemonProcess]
) -> None:
    # JPEG-LS: decoding in the worker makes the job last long enough to be caught running
    study = prepare_study(
        tmp_path / "study", {T1C: "jpeg_ls"}, n_slices=160, rows=256, cols=256, distractors=()
    )
    node = node_factory(ingest={"series_stable_seconds": 1.0, "sweep_interval_seconds": 0.2})
    node.start()
    send(node, [study.series[T1C]])
    wait_for(
        "the job to be running",
        lambda: [st for _, st, _, _ in jobs(node.data_dir)] == ["running"],
        interval=0.02,
    )
    node.stop()
    state = jobs(node.data_dir)[0][1]
    assert state in ("queued", "done"), f"job left {state} after a graceful stop"
    node.start()
    wait_for("the job to finish", lambda: jobs_settled(node))
    ((uid, final, attempts, _),) = jobs(node.data_dir)
    assert (uid, final) == (study.series[T1C].series_uid, "done")
    assert attempts <= 2
    node.stop()


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# -- 5. make run ---------------------------------------------------------------------------
def test_make_run_starts_the_daemon_and_echoscu_gets_an_answer(tmp_path: Path) -> None:
    make = require_tool("make")
    require_tool("echoscu")
    if not (REPO_ROOT / ".venv" / "bin" / "ki67node").exists():
        pytest.skip("no .venv with ki67node (make test creates it)")
    port, http_port = free_port(), free_port()
    env = clean_env(
        {
            "KI67NODE_NODE__DATA_DIR": str(tmp_path / "data"),
            "KI67NODE_NODE__PORT": str(port),
            "KI67NODE_NODE__BIND": "127.0.0.1",
            "KI67NODE_HTTP__PORT": str(http_port),
        }
    )
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log_file:
        # -o: the venv exists already (make test made it); never reinstall offline
        proc = subprocess.Popen(
            [make, "-C", str(REPO_ROOT), "-o", ".venv/.installed", "run"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for("echoscu to get an answer", lambda: c_echo(port), timeout=60.0)
        assert (tmp_path / "data" / "ki67node.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
            wait_for("the daemon to exit", lambda: group_gone(proc.pid), timeout=60.0)
        except (AssertionError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    log = log_path.read_text(errors="replace")
    assert "stopped" in log, log[-2000:]
    assert not c_echo(port, timeout=2.0)
