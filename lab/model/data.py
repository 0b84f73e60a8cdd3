"""Cases as arrays for training and batch inference, and their torch batches.

A :class:`CaseTable` holds the assessable cases of a manifest (crops,
characteristics, raw radiomics, labels) in case order; subsets are taken by
index for splits. :func:`batch_tensors` turns rows into the network's
keyword arguments, with radiomics standardised by the training statistics
and an optional modality mask (the rows of the paper's ablation table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ai_core.errors import EvaluationError
from ai_core.model.inputs import CHARACTERISTICS
from ai_core.radiomics_standardiser import RadiomicsStandardiser
from lab.model.cases import ManifestCase
from lab.model.feature_cache import CaseFeatures

if TYPE_CHECKING:
    import torch

MODALITY_COMBINATIONS: dict[str, tuple[bool, bool, bool]] = {
    "MRI": (True, False, False),
    "Radiological": (False, True, False),
    "Radiomics": (False, False, True),
    "MRI + Radiological": (True, True, False),
    "MRI + Radiomics": (True, False, True),
    "Radiological + Radiomics": (False, True, True),
    "MRI + Radiological + Radiomics": (True, True, True),
}


@dataclass(frozen=True, eq=False)
class CaseTable:
    """Assessable cases of a manifest as arrays (row i = case_ids[i])."""

    case_ids: list[str]
    crops: np.ndarray  # float16 [N, C, z, y, x]
    characteristics: np.ndarray  # float32 [N, 4]
    characteristics_known: np.ndarray  # bool [N, 4]
    radiomics: np.ndarray  # float64 [N, F] raw values, NaN = failed
    radiomics_names: tuple[str, ...]
    labels: np.ndarray  # int64 [N]
    cohorts: list[str]
    volume_cm3: np.ndarray  # float64 [N], measured on the mask used
    clinical: np.ndarray  # float64 [N, k] age / sex_female, NaN = unknown
    clinical_names: tuple[str, ...]
    bayes: np.ndarray  # float64 [N], NaN when the manifest has no Bayes probability
    not_assessable: dict[str, str]  # case id -> reason (excluded from the arrays)

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> CaseTable:
        idx = np.asarray(index, dtype=int)
        return CaseTable(
            [self.case_ids[i] for i in idx],
            self.crops[idx],
            self.characteristics[idx],
            self.characteristics_known[idx],
            self.radiomics[idx],
            self.radiomics_names,
            self.labels[idx],
            [self.cohorts[i] for i in idx],
            self.volume_cm3[idx],
            self.clinical[idx],
            self.clinical_names,
            self.bayes[idx],
            {},
        )

    def where_cohort(self, cohort: str) -> CaseTable:
        return self.subset([i for i, c in enumerate(self.cohorts) if c == cohort])

    def clinical_matrix(self) -> tuple[np.ndarray, list[str]]:
        """Inputs of the clinical baseline: the four characteristics (NaN unknown) + age/sex."""
        chars = np.where(self.characteristics_known, self.characteristics, np.nan).astype(float)
        # the table stores log(edema index); the baseline takes the index itself
        chars[:, 0] = np.exp(chars[:, 0])
        return np.concatenate([chars, self.clinical], axis=1), [
            *CHARACTERISTICS,
            *self.clinical_names,
        ]


def build_table(cases: Sequence[ManifestCase], features: Sequence[CaseFeatures]) -> CaseTable:
    """The table of the assessable cases; the others are listed with their reason."""
    if len(cases) != len(features):
        raise EvaluationError("cases and features differ in length")
    ok = [(c, f) for c, f in zip(cases, features, strict=True) if f.ok]
    skipped = {f.case_id: f.reason for f in features if not f.ok}
    if not ok:
        raise EvaluationError("no case of the manifest could be analysed; see the log for reasons")
    names = ok[0][1].radiomics_names
    chars = np.zeros((len(ok), len(CHARACTERISTICS)), np.float32)
    known = np.zeros((len(ok), len(CHARACTERISTICS)), bool)
    clinical_names = ("age", "sex_female")
    clinical = np.full((len(ok), len(clinical_names)), np.nan)
    for i, (case, _) in enumerate(ok):
        chars[i], known[i] = case.characteristics.encode()
        for j, name in enumerate(clinical_names):
            clinical[i, j] = case.clinical.get(name, np.nan)
    keep = [j for j in range(len(clinical_names)) if np.isfinite(clinical[:, j]).any()]
    return CaseTable(
        case_ids=[c.case_id for c, _ in ok],
        crops=np.stack([f.crop for _, f in ok]).astype(np.float16),  # type: ignore[misc]
        characteristics=chars,
        characteristics_known=known,
        radiomics=np.stack([f.radiomics for _, f in ok]).astype(np.float64),  # type: ignore[misc]
        radiomics_names=names,
        labels=np.array([c.label for c, _ in ok], dtype=np.int64),
        cohorts=[c.cohort for c, _ in ok],
        volume_cm3=np.array([f.volume_cm3 for _, f in ok], dtype=float),
        clinical=clinical[:, keep],
        clinical_names=tuple(clinical_names[j] for j in keep),
        bayes=np.array(
            [np.nan if c.bayes_probability is None else c.bayes_probability for c, _ in ok]
        ),
        not_assessable=skipped,
    )


def radiomics_z(table: CaseTable, standardiser: RadiomicsStandardiser) -> np.ndarray:
    """Clipped z-scores [N, F] with NaN where a feature is unknown (the baselines' input)."""
    if tuple(standardiser.names) != tuple(table.radiomics_names):
        raise EvaluationError("the standardiser and the cases disagree on the radiomics features")
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (table.radiomics - standardiser.mean) / standardiser.std
    return np.clip(z, -standardiser.clip, standardiser.clip)


def standardised_radiomics(
    table: CaseTable, standardiser: RadiomicsStandardiser
) -> tuple[np.ndarray, np.ndarray]:
    """Z-scores [N, F] (0 where unknown) and the known flags (the network's input)."""
    z = radiomics_z(table, standardiser)
    known = np.isfinite(z)
    return np.where(known, z, 0.0).astype(np.float32), known


def batch_tensors(
    table: CaseTable,
    index: Sequence[int] | np.ndarray,
    radiomics_z: np.ndarray,
    radiomics_known: np.ndarray,
    *,
    present: tuple[bool, bool, bool] = (True, True, True),
    crops: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Keyword arguments of the network's forward for rows ``index``.

    ``present`` switches a modality off for every row (the ablation rows); a
    row without any known characteristic or radiomics value has that modality
    absent anyway. ``crops`` replaces the table's crops (augmented copies).
    """
    import torch

    idx = np.asarray(index, dtype=int)
    image = table.crops[idx] if crops is None else crops
    chars_known = table.characteristics_known[idx]
    rad_known = radiomics_known[idx]
    pres = np.stack(
        [
            np.full(len(idx), present[0]),
            present[1] & chars_known.any(axis=1),
            present[2] & rad_known.any(axis=1),
        ],
        axis=1,
    )
    return {
        "image": torch.as_tensor(np.asarray(image, dtype=np.float32), device=device),
        "characteristics": torch.as_tensor(table.characteristics[idx], device=device),
        "characteristics_known": torch.as_tensor(chars_known, device=device),
        "radiomics": torch.as_tensor(radiomics_z[idx], device=device),
        "radiomics_known": torch.as_tensor(rad_known, device=device),
        "present": torch.as_tensor(pres, device=device),
    }
