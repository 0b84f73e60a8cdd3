"""The cascaded multi-modal Transformer: config, shapes, zeroing, modality dropout, loss."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ai_core.errors import ModelError
from ai_core.model.blocks import LinearEvidence, size_values, texture_values
from ai_core.model.config import ModelConfig
from ai_core.model.network import (
    MODALITIES,
    CascadedMixingTransformer,
    CascadeOutput,
    cascade_loss,
    modality_dropout,
)

TINY = ModelConfig(
    crop_size=(16, 16, 16),
    cnn_channels=(4, 8, 8),
    d_model=16,
    n_heads=2,
    n_radiomics=10,
    dropout=0.1,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def make_batch(
    config: ModelConfig,
    b: int = 4,
    present: tuple[bool, bool, bool] = (True, True, True),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    char_known = torch.rand(b, config.n_characteristics, generator=g) > 0.3
    char_known[0] = False  # one sample with every characteristic unknown
    rad_known = torch.rand(b, config.n_radiomics, generator=g) > 0.2
    return {
        "image": torch.rand(b, config.in_channels, *config.crop_size, generator=g),
        "characteristics": torch.randn(b, config.n_characteristics, generator=g),
        "characteristics_known": char_known,
        "radiomics": torch.randn(b, config.n_radiomics, generator=g),
        "radiomics_known": rad_known,
        "present": torch.tensor([present] * b),
    }


# ---------------------------------------------------------------- config

BAD_CONFIGS = [
    pytest.param(
        {"in_channels": 0}, r"ModelConfig\.in_channels must be a positive int", id="in_channels-0"
    ),
    pytest.param(
        {"d_model": 96.0}, r"ModelConfig\.d_model must be a positive int", id="d_model-float"
    ),
    pytest.param(
        {"n_heads": True}, r"ModelConfig\.n_heads must be a positive int", id="n_heads-bool"
    ),
    pytest.param(
        {"n_heads": 5},
        r"ModelConfig\.n_heads must divide d_model \(96\), got 5",
        id="n_heads-divide",
    ),
    pytest.param({"ffn_mult": -1}, r"ModelConfig\.ffn_mult", id="ffn_mult"),
    pytest.param({"n_queries": 0}, r"ModelConfig\.n_queries", id="n_queries"),
    pytest.param(
        {"n_characteristics": 0}, r"ModelConfig\.n_characteristics", id="n_characteristics"
    ),
    pytest.param({"n_radiomics": "1218"}, r"ModelConfig\.n_radiomics", id="n_radiomics-str"),
    pytest.param(
        {"crop_size": (64, 64)}, r"ModelConfig\.crop_size must have 3 entries", id="crop-2d"
    ),
    pytest.param(
        {"crop_size": (64, 60, 64)},
        r"ModelConfig\.crop_size must be divisible by 2\*\*n_down = 8",
        id="crop-divisible",
    ),
    pytest.param(
        {"crop_size": (8, 8, 8)}, r"ModelConfig\.crop_size .* at least 16", id="crop-too-small"
    ),
    pytest.param(
        {"crop_size": (256, 256, 256)},
        r"ModelConfig\.crop_size .* more than 4096 MRI tokens",
        id="crop-too-many-tokens",
    ),
    pytest.param(
        {"cnn_channels": (16,)},
        r"ModelConfig\.cnn_channels needs at least 2 stages",
        id="cnn-one-stage",
    ),
    pytest.param(
        {"cnn_channels": (16, 0, 8)},
        r"ModelConfig\.cnn_channels must hold positive ints",
        id="cnn-zero",
    ),
    pytest.param(
        {"cnn_channels": 16}, r"ModelConfig\.cnn_channels must be a sequence", id="cnn-int"
    ),
    pytest.param({"dropout": 1.0}, r"ModelConfig\.dropout must be a probability", id="dropout-1"),
    pytest.param(
        {"dropout": -0.1}, r"ModelConfig\.dropout must be a probability", id="dropout-negative"
    ),
    pytest.param(
        {"modality_dropout": (0.2, 0.3)},
        r"ModelConfig\.modality_dropout must be three",
        id="modality-dropout-len",
    ),
    pytest.param(
        {"modality_dropout": (0.2, 0.3, 1.5)},
        r"ModelConfig\.modality_dropout\[2\] must be a probability",
        id="modality-dropout-range",
    ),
    pytest.param(
        {"loss_weights": (0.5, 0.5)},
        r"ModelConfig\.loss_weights must be three",
        id="loss-weights-len",
    ),
    pytest.param(
        {"loss_weights": (0.5, -0.1, 0.1)},
        r"ModelConfig\.loss_weights must be finite and non-negative",
        id="loss-weights-negative",
    ),
    pytest.param(
        {"loss_weights": (0, 0, 0)},
        r"ModelConfig\.loss_weights must have a positive sum",
        id="loss-weights-zero",
    ),
    pytest.param(
        {"loss_weights": (float("nan"), 1, 1)},
        r"ModelConfig\.loss_weights must be finite",
        id="loss-weights-nan",
    ),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_CONFIGS)
def test_config_rejects_bad_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        ModelConfig(**kwargs)


def test_config_defaults_and_grid() -> None:
    cfg = ModelConfig()
    assert cfg.n_down == 3
    assert cfg.feature_grid == (8, 8, 8)
    assert cfg.n_mri_tokens == 512


def test_config_round_trip_through_json() -> None:
    cfg = ModelConfig(
        crop_size=(32, 48, 64), cnn_channels=(8, 16, 24, 32), dropout=0, n_radiomics=7
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    back = ModelConfig.from_dict(data)
    assert back == cfg
    assert isinstance(back.dropout, float)
    assert isinstance(back.crop_size, tuple)


def test_config_from_dict_rejects_unknown_keys() -> None:
    data = ModelConfig().to_dict() | {"n_layers": 3, "d_modell": 5}
    with pytest.raises(ModelError, match=r"no field\(s\) d_modell, n_layers"):
        ModelConfig.from_dict(data)


def test_config_from_dict_missing_key_takes_default() -> None:
    new = ModelConfig(d_model=64)
    assert ModelConfig.from_dict(new.to_dict()) == new
    assert new.size_tokens and new.to_dict()["size_tokens"] is True
    assert new.linear_skip and new.to_dict()["linear_skip"] is True
    # a bundle written before the size tokens / linear path existed: no key, no weights -> off
    assert ModelConfig.from_dict({"d_model": 64}) == ModelConfig(
        d_model=64, size_tokens=False, texture_tokens=False, linear_skip=False
    )


def test_train_settings_check_the_moving_average() -> None:
    from lab.model.train import TrainSettings

    assert TrainSettings(ema_decay=0.98).to_dict()["ema_decay"] == 0.98
    for bad in (1.0, -0.1):
        with pytest.raises(ModelError, match=r"ema_decay must be in \[0, 1\)"):
            TrainSettings(ema_decay=bad)
    assert TrainSettings().linear_lr_mult == 0.0 and TrainSettings().residual_l2 == 0.5
    for name in ("linear_lr_mult", "residual_l2"):
        for bad in (-1.0, float("inf"), float("nan")):
            with pytest.raises(ModelError, match=f"{name} must be a finite number >= 0"):
                TrainSettings(**{name: bad})


# ---------------------------------------------------------------- shapes

PRESENT = {
    "+".join(name for name, on in zip(("mri", "chars", "radiomics"), combo, strict=True) if on)
    or "none": combo
    for combo in itertools.product((True, False), repeat=3)
}


@pytest.mark.parametrize("present", list(PRESENT.values()), ids=list(PRESENT))
def test_shapes_and_finite_for_every_modality_combination(present: tuple[bool, bool, bool]) -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    batch = make_batch(TINY, b=3, present=present)
    # values of absent modalities must never be read, even NaN
    for i, key in enumerate(("image", "characteristics", "radiomics")):
        if not present[i]:
            batch[key] = torch.full_like(batch[key], float("nan"))
    out = model(**batch)
    assert isinstance(out, CascadeOutput)
    assert out.logits.shape == (3, 3)
    assert out.output1.shape == out.output2.shape == (3,)
    assert torch.equal(out.output1, out.logits[:, 1])
    assert torch.isfinite(out.logits).all()
    n_tokens = (TINY.n_mri_tokens + TINY.n_summary_tokens, TINY.n_characteristics, TINY.n_radiomics)
    for attn, n in zip(out.attention, n_tokens, strict=True):
        assert attn.shape == (3, TINY.n_heads, TINY.n_queries, n)
        assert torch.isfinite(attn).all()
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, TINY.n_heads, TINY.n_queries))
    assert torch.equal(out.present, batch["present"])
    # gradients are finite too
    model.train()
    torch.manual_seed(1)
    model(**batch).logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_default_config_forward_and_gradcam_layer() -> None:
    model = CascadedMixingTransformer(ModelConfig()).eval()
    batch = make_batch(ModelConfig(), b=1)
    with torch.no_grad():
        out = model(**batch)
    assert out.attention[0].shape == (1, 4, 1, 512 + 6)  # CNN grid 8^3 + 3 size + 3 texture
    assert model.get_submodule(model.gradcam_layer) is model.mri_encoder.stages[-1]


def test_size_values_of_a_known_box() -> None:
    mask = torch.zeros(2, 16, 16, 16)
    mask[0, 2:6, 3:11, 4:7] = 1  # 4 x 8 x 3 = 96 voxels, inside the crop
    mask[1, 0:16, 5:7, 5:7] = 1  # 64 voxels through the whole crop along z
    values = size_values(mask)
    total = math.log1p(16**3)
    torch.testing.assert_close(
        values,
        torch.tensor(
            [
                [math.log1p(96) / total, 8 / 16, 0.0],
                # 8 of its 64 voxels lie on the z faces: 10 * 8 / 64 = 1.25 -> capped at 1
                [math.log1p(64) / total, 1.0, 1.0],
            ]
        ),
    )


def _textured_ball(amplitude: float, necrotic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A 24^3 crop: a ball of T1C ~ 2 * (1 + amplitude * noise) in a background of 0.5."""
    g = torch.Generator().manual_seed(3)
    z, y, x = torch.meshgrid(*(torch.arange(24.0),) * 3, indexing="ij")
    r = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2).sqrt()
    mask = (r <= 8).float()
    t1c = torch.full((24, 24, 24), 0.5)
    t1c = torch.where(mask > 0, 2.0 * (1 + amplitude * torch.randn(24, 24, 24, generator=g)), t1c)
    if necrotic:
        t1c = torch.where(r <= 4, torch.full_like(t1c, 0.3), t1c)
    return t1c, mask


def test_texture_values_measure_the_heterogeneity_of_the_enhancement() -> None:
    smooth, mask = _textured_ball(0.02)
    rough, _ = _textured_ball(0.08)
    necrotic, _ = _textured_ball(0.02, necrotic=True)
    values = texture_values(torch.stack([smooth, rough, necrotic]), mask.expand(3, -1, -1, -1))
    assert values.shape == (3, 3) and torch.isfinite(values).all()
    # log CV: four times the amplitude is log(4) more (the rim is eroded away)
    torch.testing.assert_close(
        values[1, 0] - values[0, 0], torch.tensor(math.log(4.0)), atol=0.05, rtol=0
    )
    torch.testing.assert_close(values[0, 0], torch.tensor(math.log(0.02) + 3.0), atol=0.05, rtol=0)
    # the IQR follows the texture too (normal: IQR = 1.349 sigma)
    torch.testing.assert_close(
        values[1, 1] - values[0, 1], torch.tensor(math.log(4.0)), atol=0.1, rtol=0
    )
    # a necrotic core: dark share ~ (4/7)^3 of the eroded ball; the IQR moves less than the CV
    assert values[0, 2] == 0 and 0.1 < float(values[2, 2]) < 0.3
    assert 0 < float(values[2, 1] - values[0, 1]) < 0.5 * float(values[2, 0] - values[0, 0])
    # scale-free: another intensity window gives the same values
    torch.testing.assert_close(
        texture_values(3.0 * rough[None], mask[None]), values[1:2], atol=1e-3, rtol=0
    )
    # an empty mask (an absent MRI is all zeros) stays finite
    assert torch.isfinite(texture_values(torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 8, 8))).all()


def test_texture_tokens_carry_the_heterogeneity_and_vanish_with_the_mri() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.to_dict(), "crop_size": (24, 24, 24)})
    model = CascadedMixingTransformer(cfg).eval()
    smooth, mask = _textured_ball(0.02)
    rough, _ = _textured_ball(0.08)
    batch = make_batch(cfg, b=2)
    for key in ("characteristics", "characteristics_known", "radiomics", "radiomics_known"):
        batch[key][1] = batch[key][0]  # the two samples differ only in the texture
    batch["image"] = torch.stack([torch.stack([smooth, mask]), torch.stack([rough, mask])])
    tokens = model.mri_encoder(batch["image"])
    texture = slice(cfg.n_mri_tokens + 3, cfg.n_mri_tokens + 6)
    assert not torch.allclose(tokens[0, texture], tokens[1, texture])
    _randomise_linear_path(model)
    absent = {**batch, "present": torch.tensor([[False, True, True]] * 2)}
    with torch.no_grad():
        out = model(**batch)
        gone = model(**absent)
    assert not torch.allclose(out.logits[0, 0], out.logits[1, 0])
    # without the MRI neither its tokens nor its linear term say anything
    torch.testing.assert_close(gone.logits[0], gone.logits[1])


def test_size_tokens_carry_the_tumour_size_and_vanish_with_the_mri() -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    batch = make_batch(TINY, b=2)
    batch["image"][1] = batch["image"][0]
    batch["image"][0, 1] = 0.0
    batch["image"][0, 1, 4:8, 4:8, 4:8] = 1.0  # small tumour
    batch["image"][1, 1] = 0.0
    batch["image"][1, 1, 2:14, 2:14, 2:14] = 1.0  # large tumour, same T1C
    tokens = model.mri_encoder(batch["image"])
    assert tokens.shape == (2, TINY.n_mri_tokens + 6, TINY.d_model)
    size = slice(TINY.n_mri_tokens, TINY.n_mri_tokens + 3)
    assert not torch.allclose(tokens[0, size], tokens[1, size])
    with torch.no_grad():
        out = model(**batch)
    assert not torch.allclose(out.logits[0, 0], out.logits[1, 0])
    # without the size tokens the same model family exists (older bundles, ablations)
    plain = ModelConfig(**{**TINY.to_dict(), "size_tokens": False, "texture_tokens": False})
    assert plain.n_summary_tokens == 0
    assert CascadedMixingTransformer(plain).mri_encoder(batch["image"]).shape[1] == 64
    texture_only = ModelConfig(**{**TINY.to_dict(), "size_tokens": False})
    assert CascadedMixingTransformer(texture_only).mri_encoder(batch["image"]).shape[1] == 67


def test_size_tokens_need_the_mask_channel() -> None:
    with pytest.raises(
        ModelError, match=r"texture_tokens read the tumour mask from crop channel 1"
    ):
        ModelConfig(in_channels=1)
    with pytest.raises(ModelError, match=r"in_channels must be at least 2"):
        ModelConfig(in_channels=1, size_tokens=False)
    assert ModelConfig(in_channels=1, size_tokens=False, texture_tokens=False).n_summary_tokens == 0
    with pytest.raises(ModelError, match=r"size_tokens must be true or false"):
        ModelConfig(size_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"texture_tokens must be true or false"):
        ModelConfig(texture_tokens="yes")  # type: ignore[arg-type]


def test_linear_evidence_adds_known_log_odds() -> None:
    path = LinearEvidence(n_characteristics=2, n_image=3)
    with torch.no_grad():
        path.image_weight.copy_(torch.tensor([1.0, 2.0, 0.0]))
        path.char_weight.copy_(torch.tensor([0.5, -1.0]))
        path.char_known_bias.copy_(torch.tensor([0.1, 0.2]))
        path.char_unknown_bias.copy_(torch.tensor([-3.0, 4.0]))
    size = torch.tensor([[0.5, 0.25, 1.0], [0.0, 0.0, 0.0]])
    values = torch.tensor([[2.0, float("nan")], [-1.0, 3.0]])  # an unknown value is never read
    known = torch.tensor([[True, False], [True, True]])
    mri, chars = path(size, values, known)
    torch.testing.assert_close(mri, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(
        chars, torch.tensor([(1.0 + 0.1) + 4.0, (-0.5 + 0.1) + (-3.0 + 0.2)])
    )
    mri_none, _ = path(None, values, known)
    torch.testing.assert_close(mri_none, torch.zeros(2))


def _randomise_linear_path(model: CascadedMixingTransformer) -> None:
    assert model.linear is not None
    for p in model.linear.parameters():  # zero at init: make it matter
        torch.nn.init.normal_(p, std=1.0)


def test_linear_path_follows_the_cascade_and_the_zeroing() -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    base = make_batch(TINY, b=3)
    with torch.no_grad():
        before = model(**base).logits
        _randomise_linear_path(model)
        after = model(**base).logits
    assert not torch.allclose(before, after)  # the path is live
    # the MRI head never sees the characteristics: only the heads after block 2 move
    other = {**base, "characteristics": base["characteristics"] + 1.0}
    other["characteristics_known"] = torch.ones_like(base["characteristics_known"])
    with torch.no_grad():
        moved = model(**other).logits
    torch.testing.assert_close(moved[:, 0], after[:, 0])
    assert not torch.allclose(moved[:, 1:], after[:, 1:])
    # an absent modality adds nothing through the path either (its values may be NaN)
    for i, key in ((0, "image"), (1, "characteristics")):
        present = torch.ones(3, 3, dtype=torch.bool)
        present[:, i] = False
        a = {**base, "present": present}
        b = {**a, key: torch.full_like(base[key], float("nan"))}
        with torch.no_grad():
            torch.testing.assert_close(model(**a).logits, model(**b).logits)


def test_without_linear_path_there_are_no_such_weights() -> None:
    plain = CascadedMixingTransformer(ModelConfig(**{**TINY.to_dict(), "linear_skip": False}))
    assert plain.linear is None
    assert not any(name.startswith("linear.") for name in plain.state_dict())
    with pytest.raises(ModelError, match=r"linear_skip must be true or false"):
        ModelConfig(linear_skip="yes")  # type: ignore[arg-type]


BAD_INPUTS = [
    pytest.param("image", torch.rand(2, 3, 16, 16, 16), r"in_channels = 2 channels", id="channels"),
    pytest.param("image", torch.rand(2, 2, 16, 16, 8), r"crop_size \[16, 16, 16\]", id="crop"),
    pytest.param(
        "image", torch.rand(2, 16, 16, 16), r"image must be a float tensor", id="image-4d"
    ),
    pytest.param(
        "radiomics",
        torch.rand(2, 9),
        r"radiomics must have shape \[B=2, 10\] \(n_radiomics\)",
        id="n-radiomics",
    ),
    pytest.param(
        "radiomics_known",
        torch.ones(2, 10),
        r"radiomics_known must be a bool tensor",
        id="known-float",
    ),
    pytest.param(
        "characteristics",
        torch.rand(2, 3),
        r"characteristics must have shape",
        id="n-characteristics",
    ),
    pytest.param(
        "present",
        torch.ones(2, 2, dtype=torch.bool),
        r"present must have shape \[B=2, 3\]",
        id="present-width",
    ),
    pytest.param(
        "radiomics",
        torch.full((2, 10), float("nan")),
        r"radiomics has NaN/inf where radiomics_known",
        id="radiomics-nan",
    ),
]


@pytest.mark.parametrize(("key", "value", "match"), BAD_INPUTS)
def test_forward_rejects_bad_input(key: str, value: torch.Tensor, match: str) -> None:
    model = CascadedMixingTransformer(TINY).eval()
    batch = make_batch(TINY, b=2)
    batch["radiomics_known"][:] = True
    batch[key] = value
    with pytest.raises(ModelError, match=match):
        model(**batch)


# ---------------------------------------------------------------- zeroing


def test_absent_radiomics_do_not_change_any_logit() -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    batch = make_batch(TINY, present=(True, True, False))
    other = dict(batch, radiomics=torch.randn_like(batch["radiomics"]) * 10)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**other).logits, rtol=0, atol=0)
        # sanity: present radiomics do matter for output 2
        batch["present"][:] = True
        other["present"][:] = True
        assert not torch.allclose(model(**batch).output2, model(**other).output2)


def test_absent_characteristics_do_not_change_any_logit() -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    batch = make_batch(TINY, present=(True, False, True))
    other = dict(
        batch,
        characteristics=torch.randn_like(batch["characteristics"]) * 10,
        characteristics_known=~batch["characteristics_known"],
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**other).logits, rtol=0, atol=0)


def test_output1_never_depends_on_radiomics() -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    batch = make_batch(TINY)
    other = dict(
        batch,
        radiomics=torch.randn_like(batch["radiomics"]) * 10,
        radiomics_known=torch.ones_like(batch["radiomics_known"]),
    )
    with torch.no_grad():
        a, b = model(**batch), model(**other)
    torch.testing.assert_close(a.logits[:, :2], b.logits[:, :2], rtol=0, atol=0)
    assert not torch.allclose(a.output2, b.output2)


# ---------------------------------------------------------------- modality dropout


def test_eval_is_deterministic_and_uses_present_as_given() -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    batch = make_batch(TINY, b=8)
    with torch.no_grad():
        a, b = model(**batch), model(**batch)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.present, batch["present"])


def test_training_is_reproducible_with_a_seed_and_drops_modalities() -> None:
    cfg = ModelConfig(**(TINY.to_dict() | {"modality_dropout": [0.5, 0.5, 0.5]}))
    torch.manual_seed(0)
    model = CascadedMixingTransformer(cfg).train()
    batch = make_batch(cfg, b=32)
    torch.manual_seed(7)
    a = model(**batch)
    torch.manual_seed(7)
    b = model(**batch)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.present, b.present)
    assert not a.present.all()  # something was dropped in training
    assert (a.present <= batch["present"]).all()  # nothing absent is switched on


def test_modality_dropout_never_empties_a_sample() -> None:
    torch.manual_seed(0)
    n = 20000
    present = torch.rand(n, 3) > 0.4
    used = modality_dropout(present, (0.9, 0.9, 0.9))
    had = present.any(dim=1)
    assert (used.any(dim=1) == had).all()
    assert not (used & ~present).any()
    # the rescued modality is spread over the present ones, not always the first
    only_one = used.sum(dim=1) == 1
    counts = used[only_one & present.all(dim=1)].float().mean(dim=0)
    assert (counts > 0.25).all(), counts
    # a sample with a single modality always keeps it
    single = present.sum(dim=1) == 1
    assert torch.equal(used[single], present[single])


def test_modality_names() -> None:
    assert MODALITIES == ("mri", "characteristics", "radiomics")


# ---------------------------------------------------------------- loss


def _output(logits: torch.Tensor) -> CascadeOutput:
    dummy = torch.zeros(1)
    return CascadeOutput(logits=logits, attention=(dummy, dummy, dummy), present=dummy.bool())


def test_cascade_loss_is_the_weighted_sum() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.7], [-2.0, 0.1, 0.4]])
    target = torch.tensor([1.0, 0.0, 1.0])
    total, per_head = cascade_loss(_output(logits), target, weights=(0.5, 0.4, 0.1))
    expected = [F.binary_cross_entropy_with_logits(logits[:, i], target) for i in range(3)]
    torch.testing.assert_close(per_head, torch.stack(expected))
    torch.testing.assert_close(total, 0.5 * expected[0] + 0.4 * expected[1] + 0.1 * expected[2])


def test_cascade_loss_applies_pos_weight() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.7]])
    target = torch.tensor([1.0, 0.0])
    _, plain = cascade_loss(_output(logits), target)
    _, weighted = cascade_loss(_output(logits), target, pos_weight=3.0)
    # the positive sample's term is tripled, the negative one's unchanged
    pos = F.binary_cross_entropy_with_logits(logits[0], torch.ones(3), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits[1], torch.zeros(3), reduction="none")
    torch.testing.assert_close(plain, (pos + neg) / 2)
    torch.testing.assert_close(weighted, (3 * pos + neg) / 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"weights": (1, 1)}, r"weights must be three", id="weights-len"),
        pytest.param(
            {"pos_weight": 0.0}, r"pos_weight must be a finite number > 0", id="pos-weight-0"
        ),
        pytest.param(
            {"target": torch.zeros(2, 1)}, r"target must have shape \[B=2\]", id="target-shape"
        ),
    ],
)
def test_cascade_loss_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"target": torch.zeros(2)} | kwargs
    with pytest.raises(ModelError, match=match):
        cascade_loss(_output(torch.zeros(2, 3)), **args)


# ---------------------------------------------------------------- learning


def test_a_few_steps_reduce_the_loss_on_a_learnable_toy() -> None:
    """Label = sign of radiomics feature 0 plus characteristic 1: every head can see some of it."""
    torch.manual_seed(0)
    cfg = ModelConfig(**(TINY.to_dict() | {"dropout": 0.0, "modality_dropout": [0, 0, 0]}))
    model = CascadedMixingTransformer(cfg).train()
    batch = make_batch(cfg, b=32, seed=3)
    batch["characteristics_known"][:] = True
    batch["radiomics_known"][:] = True
    target = ((batch["radiomics"][:, 0] + batch["characteristics"][:, 1]) > 0).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        total, _ = cascade_loss(model(**batch), target)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_linear_path_learning_rate_multiple_and_every_weight_optimised_once() -> None:
    from lab.model.warm_start import parameter_groups

    model = CascadedMixingTransformer(TINY)
    groups = parameter_groups(model, 1e-3, 30.0)
    assert [g["lr"] for g in groups] == [1e-3, 1e-3 * 30.0]
    assert model.linear is not None
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.linear.parameters()}
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    plain = CascadedMixingTransformer(ModelConfig(**{**TINY.to_dict(), "linear_skip": False}))
    assert len(parameter_groups(plain, 1e-3, 30.0)) == 1


def test_a_multiple_of_zero_freezes_the_linear_path() -> None:
    from lab.model.warm_start import parameter_groups

    model = CascadedMixingTransformer(TINY)
    assert model.linear is not None
    groups = parameter_groups(model, 1e-3, 0.0)
    assert len(groups) == 1
    frozen = {id(p) for p in model.linear.parameters()}
    assert not frozen & {id(p) for p in groups[0]["params"]}
    assert not any(p.requires_grad for p in model.linear.parameters())
    assert all(p.requires_grad for p in groups[0]["params"])


def test_attention_logits_are_the_logits_without_the_linear_path() -> None:
    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    _randomise_linear_path(model)
    batch = make_batch(TINY, b=3)
    with torch.no_grad():
        out = model(**batch)
        assert model.linear is not None
        for head in model.heads:
            head[1].weight.zero_()
        zeroed = model(**batch)
    assert out.linear is not None and out.linear.shape == (3, 3)
    assert out.linear.abs().sum() > 0
    torch.testing.assert_close(out.attention_logits, out.logits - out.linear)
    # with the heads' weights zero the attention path adds only the heads' biases
    biases = torch.cat([h[1].bias for h in model.heads]).detach()
    torch.testing.assert_close(zeroed.attention_logits, biases.expand(3, 3))
    plain = CascadedMixingTransformer(ModelConfig(**{**TINY.to_dict(), "linear_skip": False}))
    with torch.no_grad():
        p = plain.eval()(**batch)
    assert torch.equal(p.linear, torch.zeros(3, 3))


def test_a_measured_summary_replaces_the_one_read_off_the_image() -> None:
    from ai_core.model.blocks import summary_values

    torch.manual_seed(0)
    model = CascadedMixingTransformer(TINY).eval()
    _randomise_linear_path(model)
    batch = make_batch(TINY, b=3)
    with torch.no_grad():
        plain = model(**batch).logits
        same = model(**batch, summary=summary_values(batch["image"], TINY)).logits
        other = model(**batch, summary=summary_values(batch["image"], TINY) + 1.0).logits
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(other[:, 0], plain[:, 0])
    with pytest.raises(ModelError, match=r"summary must have shape \[B=3, 6\]"):
        model(**batch, summary=torch.zeros(3, 3))


def test_warm_start_fits_the_linear_path_as_a_logistic_regression() -> None:
    """y depends on a texture value and one characteristic: the warm start finds both."""
    from types import SimpleNamespace

    from lab.evaluation.metrics import roc_auc
    from lab.model.warm_start import warm_start_linear

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = 400
    summary = torch.randn(n, TINY.n_summary_tokens, generator=g) * 0.5 + 2.0
    chars = torch.randn(n, TINY.n_characteristics, generator=g)
    known = torch.rand(n, TINY.n_characteristics, generator=g) > 0.2
    logit = 2.0 * (summary[:, 3] - 2.0) + 1.5 * torch.where(known[:, 1], chars[:, 1], 0.0) - 1.0
    y = (torch.rand(n, generator=g) < torch.sigmoid(logit)).long()
    table = SimpleNamespace(
        characteristics=chars.numpy(), characteristics_known=known.numpy(), labels=y.numpy()
    )
    model = CascadedMixingTransformer(TINY)
    warm_start_linear(model, table, summary, 1.0, torch.device("cpu"))
    lin = model.linear
    assert lin is not None
    image_w, char_w = lin.image_weight.detach(), lin.char_weight.detach()
    # the weights of the informative inputs dominate; the others stay near 0
    assert float(image_w[3]) == pytest.approx(2.0, abs=0.5)
    assert float(char_w[1]) == pytest.approx(1.5, abs=0.4)
    others = torch.cat([image_w[[0, 1, 2, 4, 5]], char_w[[0, 2, 3]]])
    assert float(others.abs().max()) < 0.5
    # centred: an absent MRI adds 0, as an average one would
    torch.testing.assert_close(lin.image_centre, model.linear_input(summary).mean(dim=0))
    # an unknown characteristic reads as the average known one
    v = chars[:, 1][known[:, 1]]
    expected = float((v * char_w[1] + lin.char_known_bias.detach()[1]).mean())
    assert float(lin.char_unknown_bias.detach()[1]) == pytest.approx(expected, abs=1e-4)
    # the attention path starts as a no-op: the heads' weights are zero, their biases
    # are the regression's intercepts
    assert all(float(h[1].weight.detach().abs().max()) == 0.0 for h in model.heads)
    # the heads (bias + linear path) rank the cases as the true log-odds do
    with torch.no_grad():
        terms = model.linear_terms(summary, chars, known, torch.ones(n, 3))
        head1 = model.heads[1][1].bias + terms[1]
    assert roc_auc(y.numpy(), head1.numpy()) > 0.95 * roc_auc(y.numpy(), logit.numpy())


def test_a_linear_path_saved_without_its_centre_loads_with_zero() -> None:
    """Bundles written before LinearEvidence.image_centre existed (it was 0 then) still load."""
    model = CascadedMixingTransformer(TINY)
    state = {k: v for k, v in model.state_dict().items() if k != "linear.image_centre"}
    again = CascadedMixingTransformer(TINY)
    assert again.linear is not None
    again.linear.image_centre.fill_(5.0)
    again.load_state_dict(state)  # strict: nothing else may be missing
    assert torch.equal(again.linear.image_centre, torch.zeros(TINY.n_summary_tokens))
    with pytest.raises(RuntimeError, match="Missing key"):
        again.load_state_dict({k: v for k, v in state.items() if k != "linear.image_weight"})


def _tiny_table(n: int, seed: int):  # type: ignore[no-untyped-def]
    from lab.model.data import CaseTable

    rng = np.random.default_rng(seed)
    crops = np.zeros((n, 2, *TINY.crop_size), dtype=np.float16)
    labels = (np.arange(n) % 3 == 0).astype(np.int64)
    for i in range(n):  # high cases: larger, brighter tumours
        r = 3 + 2 * labels[i] + int(rng.integers(0, 2))
        crops[i, 1, 8 - r : 8 + r, 8 - r : 8 + r, 8 - r : 8 + r] = 1
        crops[i, 0] = crops[i, 1] * (0.5 + 0.2 * labels[i]) + rng.normal(0, 0.05, TINY.crop_size)
    names = tuple(f"f{k}" for k in range(TINY.n_radiomics))
    return CaseTable(
        [f"c{i}" for i in range(n)],
        crops,
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.random((n, 4)) > 0.3,
        rng.normal(size=(n, TINY.n_radiomics)),
        names,
        labels,
        ["dev"] * n,
        np.ones(n),
        np.full((n, 2), np.nan),
        ("age", "sex_female"),
        np.full(n, np.nan),
        {},
    )


def test_training_keeps_the_frozen_linear_path_and_shrinks_the_attention_path() -> None:
    """linear_lr_mult 0: the regression fitted before epoch 1 is the one kept; a larger
    residual_l2 keeps the attention path's logits closer to 0."""
    from ai_core.radiomics_standardiser import RadiomicsStandardiser
    from lab.model.data import standardised_radiomics
    from lab.model.train import TrainSettings, train_run
    from lab.model.warm_start import training_summaries, warm_start_linear

    train, val = _tiny_table(24, 1), _tiny_table(12, 2)
    std = RadiomicsStandardiser.fit(
        [dict(zip(train.radiomics_names, row, strict=True)) for row in train.radiomics],
        train.radiomics_names,
    )
    sizes = {}
    for l2 in (0.0, 50.0):
        settings = TrainSettings(
            epochs=4, min_epochs=4, batch_size=8, augment=False, residual_l2=l2
        )
        run = train_run(TINY, train, val, std, settings)
        torch.manual_seed(settings.seed)  # the same initialisation train_run started from
        ref = CascadedMixingTransformer(TINY)
        n_pos = int(train.labels.sum())
        warm_start_linear(
            ref,
            train,
            training_summaries(train, TINY, "cpu"),
            (24 - n_pos) / n_pos,
            torch.device("cpu"),
        )
        for key, value in ref.linear.state_dict().items():
            torch.testing.assert_close(run.state_dict[f"linear.{key}"], value)
        model = CascadedMixingTransformer(TINY).eval()
        model.load_state_dict(run.state_dict)
        from lab.model.data import batch_tensors

        z, known = standardised_radiomics(val, std)
        with torch.no_grad():
            out = model(**batch_tensors(val, np.arange(len(val)), z, known))
        centred = out.attention_logits - out.attention_logits.mean(dim=0)
        sizes[l2] = float(centred.pow(2).mean())
    assert sizes[50.0] < sizes[0.0], sizes
