"""The bundled demo bundle: it loads, says it is synthetic, and its Grad-CAM lies on the tumour.

Research use only: demo weights trained on the synthetic cohort.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ai_core.model.bundle import BUNDLED_DIR, load_bundle

pytestmark = pytest.mark.slow


def test_bundled_bundle_is_honest_and_small() -> None:
    bundle = load_bundle()
    assert bundle.path == BUNDLED_DIR
    assert bundle.synthetic
    assert bundle.meta["disclaimer"] == "research use only, not for diagnostic use"
    assert "synthetic" in bundle.version
    assert bundle.meta["metrics"]["validation_output1"]["auc"] >= 0.0  # measured, not typed
    size = sum(p.stat().st_size for p in BUNDLED_DIR.iterdir() if p.is_file())
    assert size < 20 * 1024 * 1024


#: Small synthetic cases the explanation map is checked on (seed never trained on).
CASES = 4


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lab.synth import generate_cohort

    out = tmp_path_factory.mktemp("bundled") / "cohort"
    summary = generate_cohort(out, cases=CASES, seed=61, size="small", progress=False)
    return summary.manifest_csv


def test_explanation_hot_spot_lies_on_the_tumour(cases: Path) -> None:
    """On every case, whichever class is reported, the hottest voxels of the heatmap the
    SCs show lie on or right next to the tumour (within ~1 cm), mapped back onto the
    source series, and so does its peak."""
    import SimpleITK as sitk

    from ai_core.analysis import AnalysisOptions, analyse_series
    from ai_core.image import Grid, resample_mask
    from ai_core.model.predict import Predictor
    from lab.model.cases import read_manifest
    from lab.model.feature_cache import series_files

    bundle = load_bundle()
    predictor = Predictor(bundle, device="cpu")
    rows = read_manifest(cases)
    assert len(rows) == CASES
    for row in rows:
        analysis = analyse_series(
            series_files(row),
            None,  # type: ignore[arg-type]  # the true mask replaces segmentation
            options=AnalysisOptions(
                preprocess=bundle.preprocess, radiomics_params=bundle.radiomics_params
            ),
            reference_mask=row.mask,
        )
        prediction = predictor.predict(analysis)
        cam = prediction.gradcam_source
        assert cam is not None and cam.shape == analysis.volume.shape
        truth = resample_mask(sitk.ReadImage(str(row.mask)), Grid.of(analysis.volume))
        near = ndi.binary_dilation(truth > 0, iterations=5)
        hot = cam >= np.quantile(cam[cam > 0], 0.95)
        assert hot.any()
        share = (hot & near).sum() / hot.sum()
        assert share > 0.5, (row.case_id, prediction.probability_output1, share)
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert near[peak], row.case_id
