"""Montages of synthetic cases: look at what the generator makes.

``python -m lab.synth.montage COHORT_DIR OUT.png [CASE_ID ...]`` reads each
case's T1C series back from its DICOM files (so it shows exactly what a
reader gets), and draws three orthogonal slices through the tumour centre
with the true mask outline, plus the case's ground truth in the title.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(volume [slice, row, col] in real-world values, voxel->LPS affine) of one series."""
    files = sorted(folder.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    if "PerFrameFunctionalGroupsSequence" in first:
        arr = first.pixel_array.astype(np.float32)
        shared = first.SharedFunctionalGroupsSequence[0]
        iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        ps = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
        pos = np.array(
            [
                f.PlanePositionSequence[0].ImagePositionPatient
                for f in first.PerFrameFunctionalGroupsSequence
            ],
            float,
        )
        pvt = shared.PixelValueTransformationSequence[0]
        arr = arr * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
    else:
        dss = [pydicom.dcmread(f) for f in files]
        iop = np.array(dss[0].ImageOrientationPatient, float)
        ps = [float(v) for v in dss[0].PixelSpacing]
        pos = np.array([d.ImagePositionPatient for d in dss], float)
        arr = np.stack([d.pixel_array.astype(np.float32) for d in dss])
        arr = arr * float(getattr(dss[0], "RescaleSlope", 1)) + float(
            getattr(dss[0], "RescaleIntercept", 0)
        )
    x, y = iop[:3], iop[3:]
    n = np.cross(x, y)
    order = np.argsort(pos @ n)
    arr, pos = arr[order], pos[order]
    step = (pos[-1] - pos[0]) / max(len(pos) - 1, 1)
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2], aff[:3, 3] = step, y * ps[0], x * ps[1], pos[0]
    return arr, aff


def render(
    cohort: Path, out_png: Path, case_ids: list[str] | None = None, n: int = 6, dpi: int = 70
) -> Path:
    """Draw the montage; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    truth: list[dict[str, Any]] = json.loads((cohort / "ground_truth.json").read_text())
    rows = [r for r in truth if case_ids is None or r["case_id"] in case_ids][:n]
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 4.4 * len(rows)), squeeze=False)
    for ax_row, rec in zip(axes, rows, strict=True):
        vol, aff = read_series(cohort / rec["case_id"] / str(rec["series_number"]))
        mask_img = nib.Nifti1Image.from_filename(str(cohort / rec["mask_file"]))
        mask = np.asarray(mask_img.dataobj)  # [col, row, slice] in file slice order
        mask_lps = _mask_to_volume(mask, mask_img.affine, aff, vol.shape)
        vol, mask_lps = _to_display(vol, aff, mask_lps)
        idx = np.argwhere(mask_lps)
        c = idx.mean(axis=0).astype(int) if len(idx) else np.array(vol.shape) // 2
        hi = np.percentile(vol, 99.7)
        views = (vol[c[0]], vol[:, c[1]], vol[:, :, c[2]])
        masks = (mask_lps[c[0]], mask_lps[:, c[1]], mask_lps[:, :, c[2]])
        for ax, img, m in zip(ax_row, views, masks, strict=True):
            ax.imshow(img, cmap="gray", vmin=0, vmax=hi, interpolation="nearest")
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors="r", linewidths=0.5, alpha=0.5)
            ax.set_axis_off()
        ax_row[0].set_title(
            f"{rec['case_id']} {rec['vendor']} {rec['orientation']} | {rec['location']} {rec['side']} | "
            f"{rec['volume_cm3']:.1f} cm3, Ki-67 {rec['ki67_index']}% p={rec['bayes_probability']:.2f}\n"
            f"EI {rec['edema_index']:.2f} nec {int(rec['necrosis'])} cleft {int(rec['csf_cleft'])} "
            f"caps {int(rec['capsular_enhancement'])}",
            fontsize=8,
            loc="left",
        )
    fig.tight_layout()
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png


def _to_display(
    vol: np.ndarray, aff: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder axes to [superior->inferior, anterior->posterior, right->left] (radiological)."""
    axes = [int(np.argmax(np.abs(aff[:3, i]))) for i in range(3)]  # LPS axis of each array axis
    if len(set(axes)) < 3:
        return vol, mask
    order = [axes.index(2), axes.index(1), axes.index(0)]
    vol, mask = vol.transpose(order), mask.transpose(order)
    signs = [np.sign(aff[2, order[0]]), np.sign(aff[1, order[1]]), np.sign(aff[0, order[2]])]
    flips = [
        signs[0] > 0,
        signs[1] < 0,
        signs[2] < 0,
    ]  # superior first, anterior first, right first
    for axis, flip in enumerate(flips):
        if flip:
            vol, mask = np.flip(vol, axis), np.flip(mask, axis)
    return vol, mask


def _mask_to_volume(
    mask: np.ndarray, mask_affine: np.ndarray, vol_affine: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Put the [col,row,slice] RAS mask onto the sorted [slice,row,col] LPS volume grid."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    to_mask = np.linalg.inv(flip @ mask_affine) @ vol_affine  # volume index -> mask index
    out = np.zeros(shape, dtype=bool)
    idx = np.argwhere(mask > 0)
    if not len(idx):
        return out
    inv = np.linalg.inv(to_mask)
    v = np.rint(idx @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((v >= 0) & (v < np.array(shape)), axis=1)
    out[tuple(v[ok].T)] = True
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        sys.stderr.write("usage: python -m lab.synth.montage COHORT_DIR OUT.png [CASE_ID ...]\n")
        return 2
    render(Path(args[0]), Path(args[1]), args[2:] or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
