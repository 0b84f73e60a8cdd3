"""``ki67node process`` (the pipeline offline on a folder) and ``ki67node
characteristics`` (the radiologist's four characteristics → amended SR).

``process`` runs the same code as the daemon's job (:mod:`daemon.jobs.chain`,
same series filter, same builders) and writes the SEG / SC / SR files into
``--out`` as ``<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` plus
``summary.json``. Exit 0 when at least one T1C series was processed, 3 when
none qualified, 1 when series qualified but none could be processed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_core.disclaimer import DISCLAIMER
from ai_core.errors import AiCoreError
from ai_core.model.inputs import Characteristics, parse_bool
from daemon.cli.common import current_user, load_config, setup_logging
from daemon.db.engine import make_engine, migrate
from daemon.db.models import Series, Study, StudyCharacteristics, utcnow
from daemon.dicom.storage import valid_uid
from daemon.errors import NodeError
from daemon.intake.headers import extract_header
from daemon.intake.reanalysis import requeue_series
from daemon.intake.series_filter import decide_series
from daemon.serve import queue_factory

log = logging.getLogger(__name__)

EXIT_NONE_QUALIFIED = 3


class ProcessError(NodeError):
    """``ki67node process`` cannot run as asked."""


@dataclass
class _Series:
    uid: str
    paths: list[Path] = field(default_factory=list)
    headers: list[dict[str, Any]] = field(default_factory=list)


def add_result_commands(sub: Any) -> None:
    p = sub.add_parser(
        "process",
        help="run the pipeline offline on a folder of DICOM files; write SEG/SC/SR files",
        description="Run the same pipeline as the daemon on a folder of DICOM files (searched "
        "recursively) and write the SEG, heatmap SC and SR files to --out. Exit 0 when at "
        "least one T1C series was processed, 3 when none qualified.",
    )
    p.add_argument("dicom_dir", metavar="DICOM_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the result files")
    p.add_argument("--config", help="TOML configuration (default: config/ki67node.toml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _characteristic_options(p)
    p.set_defaults(func=cmd_process)

    p = sub.add_parser(
        "characteristics",
        help="record the radiologist's four radiological characteristics; re-run the prediction",
        description="Record the four radiological characteristics of a study's meningioma. "
        "The running daemon re-runs the prediction for the study's T1C series and sends an "
        "amended SR that references the previous one. Values not given are kept.",
    )
    p.add_argument("study_uid", metavar="STUDY_UID")
    p.add_argument("--config", help="TOML configuration (default: config/ki67node.toml)")
    _characteristic_options(p)
    p.set_defaults(func=cmd_characteristics)


def _characteristic_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--edema-index",
        type=float,
        metavar="F",
        help="(edema + tumour volume) / tumour volume; 1.0 = no edema",
    )
    p.add_argument("--necrosis", metavar="yes/no")
    p.add_argument("--csf-cleft", metavar="yes/no")
    p.add_argument("--capsular-enhancement", metavar="present/absent")


def characteristics_from_args(args: argparse.Namespace) -> Characteristics:
    """The four values from the command line (ModelError on a bad one)."""
    return Characteristics(
        edema_index=args.edema_index,
        necrosis=parse_bool(args.necrosis, "necrosis"),
        csf_cleft=parse_bool(args.csf_cleft, "csf-cleft"),
        capsular_enhancement=parse_bool(args.capsular_enhancement, "capsular-enhancement"),
    )


# -- process -------------------------------------------------------------------------
def scan_folder(folder: Path) -> tuple[dict[str, _Series], int]:
    """DICOM files under ``folder`` grouped by series; also the count of files skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, _Series] = {}
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError, TypeError):
            skipped += 1
            continue
        entry = series.setdefault(uid, _Series(uid))
        entry.paths.append(path)
        entry.headers.append(extract_header(ds))
    return series, skipped


def _write(datasets: list[Any], out: Path) -> list[str]:

    written = []
    for ds in datasets:
        parts = [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
        if not all(valid_uid(p) for p in parts):
            raise ProcessError(f"refusing to write an object with an invalid UID: {parts}")
        folder = out.joinpath(parts[0], parts[1])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{parts[2]}.dcm"
        tmp = path.with_suffix(".part")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        written.append(str(path.relative_to(out)))
    return written


def _received_segs(series: dict[str, _Series]) -> dict[str, Path]:
    """Referenced series UID → the SEG file in the folder that segments it."""
    import pydicom
    from pydicom.uid import SegmentationStorage

    found: dict[str, Path] = {}
    for s in series.values():
        if {h.get("SOPClassUID") for h in s.headers} != {SegmentationStorage}:
            continue
        for path in s.paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for item in ds.get("ReferencedSeriesSequence", []) or []:
                found[str(item.get("SeriesInstanceUID", ""))] = path
    return found


def _offline_key(series_uid: str, chars: Characteristics, seg: Path | None) -> str:
    """Same inputs → same output UIDs (a re-run overwrites); other inputs → new UIDs."""
    facts = json.dumps(
        {"characteristics": chars.known(), "seg": "" if seg is None else _sop_uid(seg)},
        sort_keys=True,
    )
    return f"{series_uid}/offline/{hashlib.sha256(facts.encode()).hexdigest()[:16]}"


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def cmd_process(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from daemon.jobs.chain import ChainRequest, run_chain
    from dicom_out.context import OutputError

    settings = load_config(args)
    setup_logging("WARNING" if not args.debug else "DEBUG")
    folder, out = Path(args.dicom_dir), Path(args.out)
    if not folder.is_dir():
        raise ProcessError(f"{folder} is not a folder")
    chars = characteristics_from_args(args)
    series, skipped = scan_folder(folder)
    if not series:
        raise ProcessError(f"no DICOM files found under {folder} ({skipped} other file(s))")
    segs = _received_segs(series)
    report: dict[str, Any] = {"disclaimer": DISCLAIMER, "skipped_files": skipped, "series": []}
    todo = []
    for s in series.values():
        decision = decide_series(s.headers, settings.filter)
        entry = {
            "series_uid": s.uid,
            "description": s.headers[0].get("SeriesDescription"),
            "instances": len(s.paths),
            "qualifies": decision.qualifies,
            "reason": decision.reason,
        }
        report["series"].append(entry)
        if decision.qualifies:
            todo.append((s, entry))
    processed = failed = 0
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(todo, desc="series", unit="series", disable=args.no_progress or not todo)
    for s, entry in bar:
        received = segs.get(s.uid)
        request = ChainRequest(
            paths=s.paths,
            job_key=_offline_key(s.uid, chars, received),
            characteristics=chars,
            received_seg=received,
        )
        try:
            result = run_chain(request, settings.pipeline)
        except (AiCoreError, OutputError) as exc:
            entry.update(status="error", error=str(exc))
            failed += 1
            continue
        entry["result"] = result.summary()
        entry["files"] = _write(result.datasets, out)
        processed += 1
    (out / "summary.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _print_report(report, out)
    if processed:
        return 0
    return 1 if failed else EXIT_NONE_QUALIFIED


def _print_report(report: dict[str, Any], out: Path) -> None:
    for entry in report["series"]:
        desc = entry.get("description") or "-"
        if not entry["qualifies"]:
            print(f"skipped   {desc[:40]:40} {entry['reason']}")
            continue
        if entry.get("status") == "error":
            print(f"ERROR     {desc[:40]:40} {entry['error']}")
            continue
        result = entry["result"]
        pred = result["prediction"]
        if pred is None:
            reason = str(result["reason"])
            if not reason.startswith(("not assessable", "no meningioma found")):
                reason = f"not assessable: {reason}"
            print(f"analysed  {desc[:40]:40} {reason}")
            continue
        m = result["analysis"]["measurements"]
        print(
            f"analysed  {desc[:40]:40} {m['volume_cm3']:.1f} cm3, {m['max_diameter_mm']:.1f} mm; "
            f"P(Ki-67 >= 5 %) = {pred['probability_output1']:.2f} ({pred['class']}); "
            f"{len(entry['files'])} file(s)"
        )
    print(f"results in {out} (summary.json); {DISCLAIMER}")


# -- characteristics ---------------------------------------------------------------------
def cmd_characteristics(args: argparse.Namespace) -> int:
    settings = load_config(args)
    if not valid_uid(args.study_uid):
        raise ProcessError(f"{args.study_uid!r} is not a valid Study Instance UID")
    given = characteristics_from_args(args)
    if not given.any_known:
        raise ProcessError(
            "give at least one of --edema-index, --necrosis, --csf-cleft, --capsular-enhancement"
        )
    engine = make_engine(settings.database_url, settings.database.busy_timeout_ms)
    migrate(engine)
    with Session(engine) as session, session.begin():
        study = session.scalar(select(Study).where(Study.study_uid == args.study_uid))
        if study is None:
            raise ProcessError(
                f"study {args.study_uid} has not been received by this node; send it first"
            )
        row = session.scalar(
            select(StudyCharacteristics).where(StudyCharacteristics.study_uid == args.study_uid)
        )
        if row is None:
            row = StudyCharacteristics(study_uid=args.study_uid)
            session.add(row)
        for name, value in given.known().items():
            setattr(row, name, value)
        merged = Characteristics(
            edema_index=row.edema_index,
            necrosis=row.necrosis,
            csf_cleft=row.csf_cleft,
            capsular_enhancement=row.capsular_enhancement,
        )
        row.entered_by = current_user()[:64]
        row.updated_at = utcnow()
        series_ids = list(
            session.scalars(
                select(Series.id).where(Series.study_id == study.id, Series.qualifies.is_(True))
            )
        )
    queue = queue_factory(settings)()
    requeued = sum(
        requeue_series(engine, queue, sid, "radiological characteristics entered")
        for sid in series_ids
    )
    known = ", ".join(f"{k}={v}" for k, v in merged.known().items())
    print(f"recorded for study {args.study_uid}: {known}")
    if requeued:
        print(f"re-analysis queued for {requeued} series; the amended SR goes to the destinations")
    else:
        print("no analysed T1C series in this study yet; the values are used when one arrives")
    engine.dispose()
    return 0
