"""Site profiles: what differs between the internal and the external hospital.

The label model (prevalence, class-conditional features) is the same at both
sites, so the Bayes probability is the same function everywhere; what changes
is the scanner park, protocols, intensity scaling, noise and bias field: the
domain shift an external validation has to survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.synth.clinical import LabelModel


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition habits of one hospital."""

    name: str
    institution: str
    vendors: tuple[tuple[str, float], ...]
    p_sagittal: float  # T1C acquired sagittal (else axial)
    p_oblique: float  # slices aligned to the head instead of the scanner axes
    p_enhanced: float  # T1C written as one Enhanced MR multi-frame instance
    p_compressed: float  # whole study sent JPEG 2000 lossless or RLE
    p_reverse: float  # slice order runs against the slice normal
    noise: tuple[float, float]  # Rician sigma, fraction of white matter
    bias: tuple[float, float]  # bias field amplitude
    scale: tuple[float, float]  # real-world value of white matter
    tissue_jitter: float  # per-tissue intensity spread between cases
    enhancement_factor: float = 1.0  # contrast dose / timing habit
    asymptomatic_fraction: float = 0.0
    label_model: LabelModel = field(default_factory=LabelModel)
    first_study_date: tuple[int, int, int] = (2019, 1, 7)


PROFILES: dict[str, SiteProfile] = {
    "internal": SiteProfile(
        name="internal",
        institution="SYNTHETIC HOSPITAL A (ki67node synth)",
        vendors=(("siemens", 0.5), ("ge", 0.3), ("philips", 0.2)),
        p_sagittal=0.65,
        p_oblique=0.3,
        p_enhanced=0.12,
        p_compressed=0.15,
        p_reverse=0.3,
        noise=(0.015, 0.035),
        bias=(0.05, 0.15),
        scale=(450.0, 1100.0),
        tissue_jitter=0.04,
    ),
    "external": SiteProfile(
        name="external",
        institution="SYNTHETIC HOSPITAL B (ki67node synth)",
        vendors=(("siemens", 0.2), ("ge", 0.3), ("philips", 0.5)),
        p_sagittal=0.45,
        p_oblique=0.4,
        p_enhanced=0.25,
        p_compressed=0.25,
        p_reverse=0.5,
        noise=(0.03, 0.06),
        bias=(0.10, 0.25),
        scale=(900.0, 2600.0),
        tissue_jitter=0.07,
        enhancement_factor=0.93,
        first_study_date=(2020, 3, 2),
    ),
}
