"""Training the segmentation from label maps (issue 17): synthesis, warm start, dural distance.

Fast: hand-made label maps and tiny networks; the real label maps are built in
tests/test_segmentation_anatomy.py (slow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_core.segmentation.dura import dural_distance
from ai_core.segmentation.labelmaps import INTRACRANIAL, TUMOUR_CODES, LabelMap, SegLabel
from ai_core.segmentation.synthesis import SynthesisParams, synthesise
from ai_core.synth.anatomy import Label


def toy_map(tumour: bool = True) -> LabelMap:
    """A 48³ 'head' at 2 mm: skin, bone, CSF, brain, an orbit-fat blob outside, a tumour."""
    zz, yy, xx = np.indices((48, 48, 48), dtype=float)
    r = np.sqrt((zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2)
    lab = np.zeros((48, 48, 48), dtype=np.uint8)
    lab[r < 22] = Label.SKIN
    lab[r < 20] = Label.BONE
    lab[r < 18] = Label.CSF
    lab[r < 17] = SegLabel.WHITE
    lab[np.sqrt((zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 44) ** 2) < 3] = Label.ORBIT_FAT
    if tumour:
        lab[np.sqrt((zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 9) ** 2) < 4] = SegLabel.TUMOUR
    t1 = np.where(lab == SegLabel.WHITE, 200 - 3 * r, 0).clip(0, 255).astype(np.uint8)
    return LabelMap(lab, t1, 2.0, 0.27 if tumour else 0.0, "convexity" if tumour else "none")


@pytest.mark.parametrize("realistic", [0.0, 1.0], ids=["random", "realistic"])
def test_synthesised_samples_are_normalised_and_their_targets_follow_the_labels(
    realistic: float,
) -> None:
    params = SynthesisParams(crop=32, p_realistic=realistic, p_tumour_centre=1.0)
    image, target = synthesise(toy_map(), np.random.default_rng(1), params)
    assert image.shape == (1, 32, 32, 32) and target.shape == (2, 32, 32, 32)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(target)) <= {0.0, 1.0}
    assert target[0].sum() > 50  # the tumour is in a tumour-centred crop
    assert np.all(target[1][target[0] > 0] == 1)  # the tumour is intracranial
    assert 0 < target[1].mean() < 1


def test_a_sample_never_calls_the_orbit_fat_intracranial() -> None:
    lm = toy_map(tumour=False)
    params = SynthesisParams(crop=32, p_tumour_centre=0.0, p_decoy_centre=1.0)
    rng = np.random.default_rng(2)
    for _ in range(3):
        _, target = synthesise(lm, rng, params)
        assert not target[0].any()
    assert Label.ORBIT_FAT not in INTRACRANIAL and SegLabel.TUMOUR in TUMOUR_CODES


def test_samples_differ_in_appearance_between_draws() -> None:
    rng = np.random.default_rng(3)
    params = SynthesisParams(crop=32, p_realistic=0.0, p_tumour_centre=1.0)
    means = []
    for _ in range(4):
        image, target = synthesise(toy_map(), rng, params)
        means.append(float(image[0][target[0] > 0].mean()))
    assert max(means) - min(means) > 0.2  # the tumour's brightness is not a constant


def test_synthesis_params_are_validated() -> None:
    with pytest.raises(ValueError, match="crop must be a multiple of 8"):
        SynthesisParams(crop=30)
    with pytest.raises(ValueError, match="p_realistic must be a probability"):
        SynthesisParams(p_realistic=1.5)


def test_dural_distance_is_zero_at_the_falx_and_the_skull_and_large_deep_inside() -> None:
    zz, yy, xx = np.indices((40, 50, 60), dtype=float)
    inside = ((zz - 20) / 18) ** 2 + ((yy - 25) / 23) ** 2 + ((xx - 30) / 28) ** 2 <= 1
    d = dural_distance(inside, 2.0)
    assert d[30, 25, 30] < 2.0  # on the mid-sagittal plane, above the centre (the falx)
    assert d[8, 25, 30] > 10.0  # midline but low (brainstem level): no falx there
    assert d[20, 25, 3] < 4.5  # two voxels from the inner table
    assert d[20, 25, 15] > 15.0  # deep in a hemisphere
    assert not d[~inside].any()
    assert not dural_distance(np.zeros((8, 8, 8), bool), 2.0).any()
    # a hole the network leaves inside the compartment (a ventricle with its choroid
    # plexus) is not dura: an enhancing plexus beside it is not "dural-based"
    ventricle = (zz - 20) ** 2 + (yy - 25) ** 2 + (xx - 15) ** 2 <= 9
    holed = dural_distance(inside & ~ventricle, 2.0)
    assert holed[20, 25, 19] > 15.0 and holed[20, 25, 15] > 15.0


def test_warm_start_keeps_the_old_tumour_probability_exactly(tmp_path: Path) -> None:
    import json

    import torch

    from ai_core.segmentation.train import warm_start
    from ai_core.segmentation.unet import UNetArchitecture

    torch.manual_seed(0)
    old_arch = UNetArchitecture(channels=(4, 8, 16), strides=(2, 2))
    old = old_arch.build().eval()
    torch.save(old.state_dict(), tmp_path / "unet.pt")
    meta = {"version": "0.1-test", "architecture": old_arch.to_dict(), "weights": "unet.pt"}
    (tmp_path / "model.json").write_text(json.dumps({**meta, "working_spacing_mm": 2.0}))
    new = UNetArchitecture(channels=(4, 8, 16), strides=(2, 2), activation="sigmoid").build()
    warm_start(new, tmp_path)
    new.eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = torch.softmax(old(x), dim=1)[0, 1]
        after = torch.sigmoid(new(x))[0, 0]
    assert float((before - after).abs().max()) < 1e-5
    # a 0.2 (two-sigmoid) model is fine-tuned as it is: every tensor copied unchanged
    torch.save(new.state_dict(), tmp_path / "unet.pt")
    (tmp_path / "model.json").write_text(
        json.dumps(
            {
                **meta,
                "architecture": UNetArchitecture(
                    channels=(4, 8, 16), strides=(2, 2), activation="sigmoid"
                ).to_dict(),
                "working_spacing_mm": 2.0,
            }
        )
    )
    again = UNetArchitecture(channels=(4, 8, 16), strides=(2, 2), activation="sigmoid").build()
    warm_start(again, tmp_path)
    for key, value in new.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    other = UNetArchitecture(channels=(8, 16, 32), strides=(2, 2), activation="sigmoid").build()
    with pytest.raises(RuntimeError, match="size mismatch"):
        warm_start(other, tmp_path)
