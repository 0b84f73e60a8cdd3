"""Grad-CAM and MRI attention maps: orientation, polarity, token order, no side effects."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from ai_core.errors import ModelError
from ai_core.model.blocks import summary_values
from ai_core.model.config import ModelConfig
from ai_core.model.explain import (
    evidence_map,
    grad_cam,
    mri_attention_map,
    size_texture_share,
    upsample_to_crop,
)
from ai_core.model.network import CascadedMixingTransformer, cascade_loss

S = 24
CFG = ModelConfig(
    crop_size=(S, S, S),
    cnn_channels=(8, 16, 16),
    d_model=32,
    n_heads=2,
    n_radiomics=4,
    dropout=0.0,
    modality_dropout=(0.0, 0.0, 0.0),
    # These tests are about the CNN's Grad-CAM (orientation, polarity, hooks): the size
    # tokens carry nothing here (the blobs differ in brightness, not in size), and the
    # texture tokens would read the blob's brightness off the mask without the CNN.
    size_tokens=False,
    texture_tokens=False,
)
GRID = torch.stack(torch.meshgrid(*(torch.arange(S, dtype=torch.float32),) * 3, indexing="ij"))
# Blob centres whose images under any transposition/flip of the axes lie, on average,
# far from them (checked below); a single centre cannot be far from all 47 of its images.
TEST_CENTRES = [(19, 6, 4), (18, 17, 18), (8, 16, 4), (18, 19, 8)]


def blob(centre: torch.Tensor, radius: float = 2.5) -> torch.Tensor:
    d2 = ((GRID - centre.float().view(3, 1, 1, 1)) ** 2).sum(0)
    return torch.exp(-d2 / (2 * radius**2))


def crops(centres: torch.Tensor, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Channel 0: noisy background + a bright (label 1) or dark (label 0) blob; 1: its mask."""
    image = torch.empty(len(centres), 2, S, S, S)
    for i, (c, y) in enumerate(zip(centres, labels, strict=True)):
        b = blob(c)
        noise = 0.1 * torch.randn(S, S, S, generator=g)
        image[i, 0] = 0.5 + noise + (0.5 if y else -0.4) * b
        image[i, 1] = (b > 0.3).float()
    return image


def mri_only(image: torch.Tensor) -> dict[str, torch.Tensor]:
    n = image.shape[0]
    return {
        "image": image,
        "characteristics": torch.zeros(n, CFG.n_characteristics),
        "characteristics_known": torch.zeros(n, CFG.n_characteristics, dtype=torch.bool),
        "radiomics": torch.zeros(n, CFG.n_radiomics),
        "radiomics_known": torch.zeros(n, CFG.n_radiomics, dtype=torch.bool),
        "present": torch.tensor([[True, False, False]] * n),
    }


@pytest.fixture(scope="module")
def trained() -> CascadedMixingTransformer:
    """A tiny model trained (~60 steps) to call a crop positive when it holds a bright blob."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = 96
    labels = torch.rand(n, generator=g) > 0.5
    image = crops(torch.randint(4, S - 4, (n, 3), generator=g), labels, g)
    model = CascadedMixingTransformer(CFG).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        idx = torch.randint(0, n, (32,))
        loss, _ = cascade_loss(model(**mri_only(image[idx])), labels[idx].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad()  # no pending gradients: grad_cam must not create any
    return model.eval()


@pytest.fixture(scope="module")
def positives() -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor(TEST_CENTRES)
    image = crops(
        centres, torch.ones(len(centres), dtype=torch.bool), torch.Generator().manual_seed(5)
    )
    return image, centres


def signed_permutations(points: torch.Tensor) -> list[torch.Tensor]:
    """Points [N, 3] under every transposition/flip of the crop axes except the identity."""
    centre = (S - 1) / 2
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            if perm == (0, 1, 2) and signs == (1, 1, 1):
                continue
            p = points.float()[:, list(perm)] - centre
            out.append(p * torch.tensor(signs, dtype=torch.float32) + centre)
    return out


def mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm(dim=1).mean())


def test_test_centres_are_asymmetric() -> None:
    centres = torch.tensor(TEST_CENTRES)
    assert min(mean_distance(alt, centres) for alt in signed_permutations(centres)) > 8


def test_grad_cam_lies_on_the_blob_in_the_input_axis_order(
    trained: CascadedMixingTransformer, positives: tuple[torch.Tensor, torch.Tensor]
) -> None:
    image, centres = positives
    with torch.no_grad():
        assert (torch.sigmoid(trained(**mri_only(image)).output1) > 0.9).all()
    cam = grad_cam(trained, mri_only(image), head=1)
    assert cam.shape == (len(centres), S, S, S)
    assert torch.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() <= 1
    com = torch.stack([(GRID * m).flatten(1).sum(1) / m.sum() for m in cam])  # [N, (z, y, x)]
    true_distance = mean_distance(com, centres)
    assert true_distance < 3.0, (com, centres)
    for alt in signed_permutations(centres):
        assert mean_distance(com, alt) > true_distance + 4.0, (com, centres, alt)


def test_grad_cam_is_hot_on_the_blob_not_inverted(
    trained: CascadedMixingTransformer, positives: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """MONAI's default_normalizer maps max -> 0; ours keeps evidence hot."""
    image, centres = positives
    cam = grad_cam(trained, mri_only(image))
    for m, c in zip(cam, centres, strict=True):
        at_blob = float(m[tuple(c.tolist())])
        assert at_blob > 0.5
        assert at_blob > 4 * float(m.mean())
        assert float(m.max()) == pytest.approx(1.0)


def test_grad_cam_restores_mode_hooks_and_gradients(
    trained: CascadedMixingTransformer, positives: tuple[torch.Tensor, torch.Tensor]
) -> None:
    image, _ = positives
    target = trained.get_submodule(trained.gradcam_layer)
    assert not trained.training
    grad_cam(trained, mri_only(image))
    assert not trained.training
    assert not target._forward_hooks and not target._backward_hooks
    assert all(p.grad is None for p in trained.parameters())

    # In training mode with gradients pending (mid-step): both survive untouched.
    trained.train()
    try:
        pending = [torch.full_like(p, 0.5) for p in trained.parameters()]
        for p, g in zip(trained.parameters(), pending, strict=True):
            p.grad = g
        grad_cam(trained, mri_only(image), head=2)
        assert trained.training
        assert all(p.grad is g for p, g in zip(trained.parameters(), pending, strict=True))
        assert all(torch.all(p.grad == 0.5) for p in trained.parameters() if p.grad is not None)
        assert not target._forward_hooks and not target._backward_hooks
    finally:
        for p in trained.parameters():
            p.grad = None
        trained.eval()


def test_grad_cam_without_mri_is_zero(trained: CascadedMixingTransformer) -> None:
    batch = mri_only(torch.full((2, 2, S, S, S), float("nan")))
    batch["present"][:, 0] = False
    cam = grad_cam(trained, batch)
    assert torch.equal(cam, torch.zeros(2, S, S, S))


@pytest.mark.parametrize(
    ("head", "drop", "match"),
    [
        pytest.param(3, None, r"head must be 0, 1 or 2", id="head-3"),
        pytest.param(True, None, r"head must be 0, 1 or 2", id="head-bool"),
        pytest.param(1, "present", r"batch lacks the forward input\(s\) present", id="missing-key"),
    ],
)
def test_grad_cam_rejects_bad_arguments(head: int, drop: str | None, match: str) -> None:
    model = CascadedMixingTransformer(CFG).eval()
    batch = mri_only(torch.rand(1, 2, S, S, S))
    if drop:
        del batch[drop]
    with pytest.raises(ModelError, match=match):
        grad_cam(model, batch, head=head)


def test_grad_cam_towards_low_turns_the_evidence_around(
    trained: CascadedMixingTransformer, positives: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The bright blob is evidence for high: the map of the evidence for low is cold there."""
    image, centres = positives
    n = len(centres)
    high = grad_cam(trained, mri_only(image), towards_high=torch.ones(n, dtype=torch.bool))
    low = grad_cam(trained, mri_only(image), towards_high=torch.zeros(n, dtype=torch.bool))
    torch.testing.assert_close(high, grad_cam(trained, mri_only(image)))
    for h, lo, c in zip(high, low, centres, strict=True):
        at = tuple(c.tolist())
        assert float(h[at]) > 0.5
        assert float(lo[at]) < 0.1


def test_grad_cam_rejects_a_wrong_class_vector(trained: CascadedMixingTransformer) -> None:
    with pytest.raises(ModelError, match=r"towards_high must have shape \[B=2\]"):
        grad_cam(trained, mri_only(torch.rand(2, 2, S, S, S)), towards_high=torch.ones(3))


# ------------------------------------------------------- evidence map (Grad-CAM + size/texture)

SIZE_CFG = dataclasses.replace(CFG, size_tokens=True, texture_tokens=True)  # + linear path


def sphere_crop(centre: tuple[int, int, int], radius: float) -> torch.Tensor:
    """[1, 2, S, S, S]: uniform background with a brighter sphere, and its mask."""
    d2 = ((GRID - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)) ** 2).sum(0)
    mask = (d2 <= radius**2).float()
    return torch.stack([0.4 + 0.4 * mask, mask])[None]


@pytest.fixture(scope="module")
def size_model() -> CascadedMixingTransformer:
    """Attention heads silenced, the linear path reading only the tumour's size (value 0)."""
    torch.manual_seed(3)
    model = CascadedMixingTransformer(SIZE_CFG).eval()
    assert model.linear is not None
    with torch.no_grad():
        for head in model.heads:
            head[1].weight.zero_()
        model.linear.image_weight.zero_()
        model.linear.image_weight[0] = 1.0
        medium = summary_values(sphere_crop((12, 12, 12), 4.0), SIZE_CFG)
        model.linear.image_centre.copy_(model.linear_input(medium)[0])
    return model


def test_evidence_of_the_size_lies_evenly_on_the_tumour(
    size_model: CascadedMixingTransformer,
) -> None:
    """A large tumour (size above the training mean) is evidence for high: hot on the mask
    and nowhere else; for a small one, the same holds for the evidence for low."""
    big = sphere_crop((15, 8, 10), 6.0)
    small = sphere_crop((7, 16, 15), 2.5)
    image = torch.cat([big, small])
    batch = mri_only(image)
    with torch.no_grad():
        linear = size_model(**batch).logits[:, 1]
    assert linear[0] > 0 > linear[1]
    high = evidence_map(size_model, batch, towards_high=torch.tensor([True, True]))
    low = evidence_map(size_model, batch, towards_high=torch.tensor([False, False]))
    mask = image[:, 1]
    torch.testing.assert_close(high[0], mask[0])
    torch.testing.assert_close(low[1], mask[1])
    assert torch.equal(high[1], torch.zeros(S, S, S))  # a small tumour says nothing for high
    assert torch.equal(low[0], torch.zeros(S, S, S))
    # the CNN carries nothing here: Grad-CAM alone is empty
    assert torch.equal(grad_cam(size_model, batch), torch.zeros(2, S, S, S))


def test_size_texture_share_is_the_linear_size_term(
    size_model: CascadedMixingTransformer,
) -> None:
    """Heads silenced: the share is exactly the linear path's MRI term, with its sign; zero without MRI; None for a model without a linear path."""
    image = torch.cat([sphere_crop((15, 8, 10), 6.0), sphere_crop((7, 16, 15), 2.5)])
    batch = mri_only(image)
    share = size_texture_share(size_model, batch)
    assert share is not None
    with torch.no_grad():
        linear = size_model(**batch).linear
    assert linear is not None
    torch.testing.assert_close(share, linear[:, 1])
    assert share[0] > 0 > share[1]
    assert all(p.grad is None for p in size_model.parameters())
    assert not size_model.training
    batch["present"][1, 0] = False
    assert float(size_texture_share(size_model, batch)[1]) == 0.0  # type: ignore[index]
    no_linear = CascadedMixingTransformer(dataclasses.replace(SIZE_CFG, linear_skip=False))
    assert size_texture_share(no_linear.eval(), mri_only(image)) is None


def test_evidence_map_adds_the_size_share_to_grad_cam(
    trained: CascadedMixingTransformer, positives: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Without a linear path the evidence map is Grad-CAM; a model without MRI gets zeros."""
    assert trained.linear is None or trained.config.n_summary_tokens == 0
    image, _ = positives
    torch.testing.assert_close(
        evidence_map(trained, mri_only(image)), grad_cam(trained, mri_only(image))
    )
    batch = mri_only(torch.full((2, 2, S, S, S), float("nan")))
    batch["present"][:, 0] = False
    assert torch.equal(evidence_map(trained, batch), torch.zeros(2, S, S, S))


# ---------------------------------------------------------------- attention maps


@pytest.mark.parametrize(
    "cell", [(0, 1, 3), (3, 0, 2), (1, 2, 0)], ids=["z0y1x3", "z3y0x2", "z1y2x0"]
)
def test_attention_map_puts_a_hot_token_on_its_cell(cell: tuple[int, int, int]) -> None:
    cfg = ModelConfig(crop_size=(16, 16, 16), cnn_channels=(4, 8, 8), d_model=16, n_heads=2)
    d, h, w = cfg.feature_grid
    assert (d, h, w) == (4, 4, 4)
    n = cfg.n_mri_tokens
    attention = torch.zeros(2, cfg.n_heads, cfg.n_queries, n + cfg.n_summary_tokens)
    z, y, x = cell
    attention[0, :, :, (z * h + y) * w + x] = 0.5  # sample 0: one hot token
    attention[0, :, :, n:] = 0.5 / cfg.n_summary_tokens  # ... and the size/texture tokens, no place
    attention[1, :, :, :n] = 1.0 / n  # sample 1: uniform over the grid
    maps = mri_attention_map(attention, cfg)
    assert maps.shape == (2, 16, 16, 16)
    assert maps.min() >= 0 and maps.max() <= 1
    peak = torch.nonzero(maps[0] == maps[0].max())
    # the peak starts on the cell's centre voxel (crop axis order) and stays in the cell
    # (a last cell's value is repeated up to the crop's edge)
    assert peak[0].tolist() == [4 * z, 4 * y, 4 * x]
    assert torch.equal(peak // 4, torch.tensor([[z, y, x]]).expand_as(peak))
    torch.testing.assert_close(maps[1], torch.ones(16, 16, 16))


def test_attention_map_of_a_forward_pass() -> None:
    cfg = ModelConfig(
        crop_size=(16, 16, 16), cnn_channels=(4, 8, 8), d_model=16, n_heads=2, n_radiomics=3
    )
    model = CascadedMixingTransformer(cfg).eval()
    batch = {
        "image": torch.rand(2, 2, 16, 16, 16),
        "characteristics": torch.zeros(2, 4),
        "characteristics_known": torch.zeros(2, 4, dtype=torch.bool),
        "radiomics": torch.zeros(2, 3),
        "radiomics_known": torch.zeros(2, 3, dtype=torch.bool),
        "present": torch.ones(2, 3, dtype=torch.bool),
    }
    with torch.no_grad():
        maps = mri_attention_map(model(**batch).attention[0], cfg)
    assert maps.shape == (2, 16, 16, 16)
    assert torch.isfinite(maps).all()
    torch.testing.assert_close(maps.flatten(1).amax(1), torch.ones(2))


def test_attention_map_rejects_wrong_token_count() -> None:
    with pytest.raises(
        ModelError,
        match=r"attention_mri must be \[B, n_heads, n_queries, "
        r"n_mri_tokens \+ n_summary_tokens = 512 \+ 6\]",
    ):
        mri_attention_map(torch.zeros(1, 4, 1, 64), ModelConfig())


def test_upsampling_keeps_cell_centres_on_their_voxels() -> None:
    cfg = ModelConfig(crop_size=(16, 32, 16), cnn_channels=(4, 8, 8))
    grid = torch.arange(4 * 8 * 4, dtype=torch.float32).view(1, 1, 4, 8, 4)
    up = upsample_to_crop(grid, cfg)
    assert up.shape == (1, 1, 16, 32, 16)
    torch.testing.assert_close(up[0, 0, ::4, ::4, ::4], grid[0, 0])
