"""Make the fuzz seed corpus from real associations (``fuzz/corpus/``; commit what it writes).

    PYTHONPATH=. python fuzz/make_corpus.py      (needs DCMTK storescu and echoscu)

Starts the node's own listener (:func:`tests.listener_harness.start_node`)
behind a recording TCP proxy, sends real traffic through the proxy (DCMTK
``echoscu``/``storescu`` with several options, pynetdicom, and the test
suite's socket-level client for the one data set both of them rewrite),
then writes:

* ``corpus/pdu/``: every distinct PDU the clients sent, one file each, and
  the whole client stream of each association (for the association path of
  ``fuzz_pdu.py``);
* ``corpus/dataset/``: the Part 10 files the node received and published,
  each as the data set after the target's own meta (the mode of its transfer
  syntax) and as a whole file (mode ``file``).

The instances are small MR images from :func:`tests.factories.make_mr_series`:
explicit and implicit VR, undefined-length sequences, an Enhanced MR
(functional group sequences), RLE Lossless (encapsulated pixel data),
ISO 2022 IR 87 text, a private sequence as UN of undefined length (CP-246),
and one nested deeper than the check allows (refused with 0xC000; its data
set seeds are the file as sent). The folders are
emptied first; UIDs differ per run.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from daemon.intake.dataset_check import MAX_DEPTH
from daemon.settings import load_settings
from fuzz.fuzz_dataset import MODE_NUMBER, MODES, seed
from fuzz.run import MAX_INPUT_BYTES
from tests.daemon_process import system_which
from tests.factories import make_mr_series
from tests.listener_harness import (
    HOST,
    MR_STORAGE,
    NodeUnderTest,
    RawClient,
    dataset_part,
    scu_echo,
    scu_store,
    start_node,
    un_undefined_sequence,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
PDU_NAMES = {1: "associate-rq", 4: "p-data", 5: "release-rq", 6: "release-rp", 7: "abort"}
CALLED_AE = "KI67NODE"
TOOL_TIMEOUT_SECONDS = 60


# -- the recording proxy --------------------------------------------------------------------
@dataclass
class Stream:
    """What one client sent on one connection."""

    label: str
    data: bytearray = field(default_factory=bytearray)


class RecordingProxy:
    """Forwards loopback connections to ``upstream_port``, recording client → server bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server = socket.create_server((HOST, 0))
        self.port = int(self.server.getsockname()[1])
        self.label = "unlabelled"  # set by the driver before each client runs
        self.streams: list[Stream] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.upstream_port))
            stream = Stream(self.label)
            self.streams.append(stream)
            for src, dst, record in ((client, upstream, stream.data), (upstream, client, None)):
                thread = threading.Thread(target=_pump, args=(src, dst, record), daemon=True)
                thread.start()
                self._threads.append(thread)

    def close(self) -> None:
        """Stop accepting; wait for the open connections to finish."""
        self.server.close()
        for thread in self._threads:
            thread.join(timeout=10)


def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
    try:
        while chunk := src.recv(65_536):
            if record is not None:
                record += chunk
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def split_pdus(stream: bytes) -> list[bytes]:
    """The complete PDUs of a recorded stream (a cut last one is dropped)."""
    pdus, pos = [], 0
    while len(stream) - pos >= 6:
        (length,) = struct.unpack_from(">L", stream, pos + 2)
        if pos + 6 + length > len(stream):
            break
        pdus.append(stream[pos : pos + 6 + length])
        pos += 6 + length
    return pdus


# -- the instances sent -------------------------------------------------------------------
def _save(ds: Dataset, path: Path, syntax: str) -> Path:
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


def _with_undefined_sequence(ds: Dataset) -> Dataset:
    """Two levels of undefined-length sequences and items (as old modalities write)."""
    inner = Dataset()
    inner.CodeValue = "113100"
    inner.CodingSchemeDesignator = "DCM"
    inner.is_undefined_length_sequence_item = True
    middle = Dataset()
    middle.ReferencedSOPClassUID = ds.SOPClassUID
    middle.PurposeOfReferenceCodeSequence = Sequence([inner])
    middle["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    middle.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([middle])
    ds["ReferencedImageSequence"].is_undefined_length = True
    return ds


def _nested_too_deep(ds: Dataset) -> Dataset:
    """Undefined-length sequences nested past the check's limit (the node refuses it)."""
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(MAX_DEPTH // 2 + 2):  # a sequence and an item per level
        inner.is_undefined_length_sequence_item = True
        outer = Dataset()
        outer.ReferencedSeriesSequence = Sequence([inner])
        outer["ReferencedSeriesSequence"].is_undefined_length = True
        inner = outer
    ds.update(inner)
    return ds


def _insert_un_sequence(path: Path) -> Path:
    """Put :func:`tests.listener_harness.un_undefined_sequence` into an explicit VR file, before group 0010 (tags ascending)."""
    data = path.read_bytes()
    start = len(data) - len(dataset_part(data))
    cut = data.index(struct.pack("<HH", 0x0010, 0x0010), start)
    path.write_bytes(data[:cut] + un_undefined_sequence() + data[cut:])
    return path


def make_instances(folder: Path) -> dict[str, list[Path]]:
    """Small MR files, one instance per send (a resent instance would be quarantined)."""
    folder.mkdir(parents=True, exist_ok=True)

    def mr(rows: int = 16) -> Dataset:
        return make_mr_series(n_slices=1, rows=rows, cols=rows)[0]

    def save(name: str, ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> list[Path]:
        return [_save(ds, folder / f"{name}.dcm", syntax)]

    rle = mr()
    rle.compress(RLELossless)
    japanese = mr()
    japanese.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    japanese.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    japanese.SeriesDescription = "造影 T1 MPRAGE"
    two = make_mr_series(n_slices=2, rows=16, cols=16)
    return {
        "series": [
            _save(ds, folder / f"series{i}.dcm", ExplicitVRLittleEndian) for i, ds in enumerate(two)
        ],
        "xs": save("xs", mr()),
        "invent": save("invent", mr()),
        "big": save("big", mr(rows=64)),  # 8 KiB of pixels: several PDUs at 4096 bytes
        "implicit": save("implicit", _with_undefined_sequence(mr()), ImplicitVRLittleEndian),
        "abort": save("abort", mr()),
        "rle": save("rle", rle, RLELossless),
        "undefined": save("undefined", _with_undefined_sequence(mr())),
        "enhanced": save(
            "enhanced", make_mr_series(n_slices=2, rows=16, cols=16, enhanced=True)[0]
        ),
        "japanese": save("japanese", japanese),
        "deep": save("deep", _nested_too_deep(mr())),
        "cp246": [_insert_un_sequence(save("cp246", mr())[0])],
    }


# -- the traffic ----------------------------------------------------------------------------
def _dcmtk(proxy: RecordingProxy, label: str, tool: str, *args: str | Path) -> None:
    """Run a DCMTK client through the proxy (``args``: options, then files if any)."""
    proxy.label = label
    options = [str(a) for a in args if not isinstance(a, Path)]
    files = [str(a) for a in args if isinstance(a, Path)]
    program = system_which(tool)  # DCMTK's, never pynetdicom's script of the same name
    if program is None:
        raise RuntimeError(f"{tool} not found: install DCMTK (apt-get install dcmtk)")
    command = [program, "-aec", CALLED_AE, "-aet", label[:16].upper(), *options]
    command += [HOST, str(proxy.port), *files]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)
    if done.returncode != 0 and "--abort" not in options:
        raise RuntimeError(f"{label} failed ({done.returncode}): {done.stderr.strip()}")


def send_traffic(proxy: RecordingProxy, files: dict[str, list[Path]]) -> None:
    _dcmtk(proxy, "echoscu", "echoscu")
    _dcmtk(proxy, "echoscu-contexts", "echoscu", "-ppc", "7", "-pts", "3")
    _dcmtk(proxy, "storescu", "storescu", *files["series"])
    _dcmtk(proxy, "storescu-xs", "storescu", "-xs", *files["xs"])
    _dcmtk(proxy, "storescu-invent", "storescu", "+IR", "1", *files["invent"], *files["invent"])
    _dcmtk(
        proxy,
        "storescu-pdu4096",
        "storescu",
        "-pdu",
        "4096",
        "--max-send-pdu",
        "4096",
        *files["big"],
    )
    _dcmtk(proxy, "storescu-implicit", "storescu", "-xi", *files["implicit"])
    _dcmtk(proxy, "storescu-rle", "storescu", "-xr", *files["rle"])
    _dcmtk(proxy, "storescu-abort", "storescu", "--abort", *files["abort"])
    proxy.label = "pynetdicom-echo"
    scu_echo(proxy.port)
    sends = [("undefined", 0), ("enhanced", 0), ("japanese", 0), ("deep", 0xC000)]
    for name, status in sends:
        proxy.label = f"pynetdicom-{name}"
        statuses = scu_store(proxy.port, files[name])
        if statuses != [status]:
            raise RuntimeError(f"pynetdicom-{name}: statuses {statuses}, not {status:#06x}")
    # DCMTK and pynetdicom rewrite a UN of undefined length as SQ: the test suite's
    # socket-level client sends the file's data set bytes as they are.
    proxy.label = "rawclient-cp246"
    (path,) = files["cp246"]
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    with RawClient(proxy.port) as client:
        if not client.associate().established:
            raise RuntimeError("rawclient-cp246: association refused")
        status = client.c_store(dataset_part(path.read_bytes()), MR_STORAGE, uid)
        client.release()
    if status != 0:
        raise RuntimeError(f"rawclient-cp246: status {status:#06x}")


# -- writing the corpus -----------------------------------------------------------------------
def _write(folder: Path, name: str, data: bytes, seen: set[str]) -> bool:
    digest = hashlib.sha1(data).hexdigest()
    if digest in seen or len(data) > MAX_INPUT_BYTES:
        return False
    seen.add(digest)
    (folder / f"{name}-{digest[:8]}.bin").write_bytes(data)
    return True


def write_pdu_seeds(streams: list[Stream], folder: Path) -> int:
    seen: set[str] = set()
    count = 0
    for stream in streams:
        data = bytes(stream.data)
        count += _write(folder, f"{stream.label}-stream", data, seen)
        for i, pdu in enumerate(split_pdus(data)):
            count += _write(
                folder, f"{stream.label}-{i:02d}-{PDU_NAMES.get(pdu[0], 'pdu')}", pdu, seen
            )
    return count


def write_dataset_seeds(published: list[Path], sent: dict[str, list[Path]], folder: Path) -> int:
    """Each received file as two seeds, named for the file sent (``invented``: new UIDs)."""
    seen: set[str] = set()
    count = 0
    mode_of = {syntax: name for name, syntax in MODES if syntax}
    name_of = {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): name
        for name, paths in sent.items()
        for path in paths
    }
    for path in published:
        data = path.read_bytes()
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        syntax = str(meta.file_meta.TransferSyntaxUID)
        sent_as = name_of.get(str(meta.SOPInstanceUID), "invented")
        name = f"{sent_as}-{UID(syntax).keyword}"
        count += _write(folder, f"{name}-file", seed("file", data), seen)
        if syntax in mode_of:
            mode = mode_of[syntax]
            count += _write(folder, f"{name}-{mode}", seed(mode, dataset_part(data)), seen)
    return count


@contextmanager
def _node(root: Path) -> Iterator[tuple[NodeUnderTest, RecordingProxy]]:
    env = {
        "KI67NODE_NODE__DATA_DIR": f'"{root / "data"}"',
        "KI67NODE_NODE__PORT": "0",
        "KI67NODE_HTTP__PORT": "0",
        "KI67NODE_HTTP__BIND": '"127.0.0.1"',
    }
    node = start_node(load_settings(None, env=env), root)
    proxy = RecordingProxy(node.port)
    try:
        yield node, proxy
    finally:
        proxy.close()
        node.stop()


def main() -> int:
    for tool in ("storescu", "echoscu"):
        if system_which(tool) is None:
            print(f"{tool} not found: install DCMTK (apt-get install dcmtk)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="ki67node-corpus-") as tmp:
        root = Path(tmp)
        files = make_instances(root / "inputs")
        with _node(root) as (node, proxy):
            send_traffic(proxy, files)
            proxy.close()
            spool = node.spool
            published = [spool.path_of(rel) for rel in sorted(spool.published_files())]
            for kind in ("pdu", "dataset"):
                shutil.rmtree(CORPUS / kind, ignore_errors=True)
                (CORPUS / kind).mkdir(parents=True)
            pdus = write_pdu_seeds(proxy.streams, CORPUS / "pdu")
            datasets = write_dataset_seeds(published + files["deep"], files, CORPUS / "dataset")
    print(
        f"{len(proxy.streams)} associations recorded: {pdus} PDU seeds, "
        f"{datasets} data set seeds from {len(published)} received files and the refused one "
        f"(modes {', '.join(f'{n}={i}' for n, i in MODE_NUMBER.items())})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
