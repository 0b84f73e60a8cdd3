"""The label model of the synthetic cohort: who is Ki-67 high and what that looks like.

Generative model (documented in docs/synthetic-cohort.md): the label is drawn
first with the prevalence of the source study, then every observable feature
independently from its class-conditional distribution. The posterior
``P(high | features)`` is therefore known exactly (Bayes' rule; for the
log-normal volume, the normal texture score and the Bernoulli signs it is a
logistic model, linear in log volume, texture and indicators). That posterior
is the Bayes probability written into the ground truth; its AUC is the
ceiling that any model working from these images can reach.

Everything the image depends on is drawn from the features below or from
label-independent randomness, never from the label directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lab.synth.tumour import LOCATIONS

KI67_THRESHOLD = 5.0  # percent: the study's cut-off for "high"


@dataclass(frozen=True)
class ClassModel:
    """Class-conditional feature distributions of one Ki-67 class."""

    mean_volume_cm3: float  # arithmetic mean of the (truncated) log-normal
    p_necrosis: float
    p_edema: float  # probability of any peritumoral edema
    edema_log_mu: float  # log(edema index - 1) ~ N(mu, edema_sigma) when present
    p_cleft: float
    p_capsule: float
    texture_mu: float  # texture score ~ N(mu, 1)
    location: tuple[float, float, float]  # convexity, falx, skull base


LOW = ClassModel(
    mean_volume_cm3=27.0,
    p_necrosis=0.10,
    p_edema=0.42,
    edema_log_mu=math.log(0.45),
    p_cleft=0.58,
    p_capsule=0.30,
    texture_mu=0.0,
    location=(0.42, 0.20, 0.38),
)
HIGH = ClassModel(
    mean_volume_cm3=46.3,
    p_necrosis=0.31,  # odds ratio (0.31/0.69)/(0.10/0.90) = 4.04
    p_edema=0.62,
    edema_log_mu=math.log(0.80),
    p_cleft=0.42,
    p_capsule=0.42,
    texture_mu=0.65,
    location=(0.52, 0.26, 0.22),
)


@dataclass(frozen=True)
class LabelModel:
    """Prevalence, shared spreads and the two class models."""

    prevalence: float = 0.23
    volume_sigma: float = 0.85  # of log volume, shared by both classes
    volume_range_cm3: tuple[float, float] = (1.5, 160.0)
    edema_sigma: float = 0.7
    edema_index_max: float = 4.0
    low: ClassModel = LOW
    high: ClassModel = HIGH
    # Small asymptomatic meningiomas under surveillance (issue 6): the volume
    # no longer depends on the label in this subgroup.
    asymptomatic_mean_cm3: float = 3.2
    asymptomatic_range_cm3: tuple[float, float] = (0.15, 9.7)
    asymptomatic_sigma: float = 0.8
    asymptomatic_p_necrosis_scale: float = 0.3
    _mu: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    def volume_mu(self, group: str) -> float:
        """Log-scale location giving the wanted truncated mean (solved once)."""
        if group not in self._mu:
            if group == "asymptomatic":
                mean, rng, s = (
                    self.asymptomatic_mean_cm3,
                    self.asymptomatic_range_cm3,
                    self.asymptomatic_sigma,
                )
            else:
                cm = self.high if group == "high" else self.low
                mean, rng, s = cm.mean_volume_cm3, self.volume_range_cm3, self.volume_sigma
            self._mu[group] = _solve_truncated_lognormal_mu(mean, rng, s)
        return self._mu[group]


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _truncated_lognormal_mean(mu: float, lo: float, hi: float, s: float) -> float:
    a, b = math.log(lo), math.log(hi)
    z = _phi((b - mu) / s) - _phi((a - mu) / s)
    num = _phi((b - mu - s * s) / s) - _phi((a - mu - s * s) / s)
    return math.exp(mu + s * s / 2) * num / max(z, 1e-300)


def _solve_truncated_lognormal_mu(mean: float, rng: tuple[float, float], s: float) -> float:
    lo, hi = math.log(rng[0]) - 3, math.log(rng[1]) + 3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _truncated_lognormal_mean(mid, rng[0], rng[1], s) < mean:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Features:
    """The observable features of one case (what the posterior is computed from)."""

    ki67_high: bool
    ki67_index: float
    subgroup: str  # "surgical" or "asymptomatic"
    volume_cm3: float  # drawn (patient space); the rendered tumour matches it
    necrosis: bool
    edema_index: float  # (edema + tumour volume) / tumour volume; 1.0 = none
    csf_cleft: bool
    capsular_enhancement: bool
    texture_score: float  # drives the enhancement heterogeneity
    location: str
    bayes_probability: float


def _trunc_normal(rng: np.random.Generator, mu: float, s: float, lo: float, hi: float) -> float:
    for _ in range(10000):
        v = rng.normal(mu, s)
        if lo <= v <= hi:
            return float(v)
    return float(np.clip(mu, lo, hi))


def draw_features(rng: np.random.Generator, model: LabelModel, subgroup: str) -> Features:
    """Draw the label, then each feature from its class-conditional distribution."""
    high = bool(rng.random() < model.prevalence)
    cm = model.high if high else model.low
    if high:
        ki67 = min(KI67_THRESHOLD + float(rng.lognormal(math.log(3.5), 0.8)), 45.0)
    else:
        ki67 = 0.5 + 4.4 * float(rng.beta(1.4, 2.0))
    ki67 = round(ki67, 1)
    if high and ki67 < KI67_THRESHOLD:
        ki67 = KI67_THRESHOLD
    if not high and ki67 >= KI67_THRESHOLD:
        ki67 = 4.9
    if subgroup == "asymptomatic":
        lo, hi = model.asymptomatic_range_cm3
        logv = _trunc_normal(
            rng,
            model.volume_mu("asymptomatic"),
            model.asymptomatic_sigma,
            math.log(lo),
            math.log(hi),
        )
        p_nec = cm.p_necrosis * model.asymptomatic_p_necrosis_scale
    else:
        lo, hi = model.volume_range_cm3
        logv = _trunc_normal(
            rng,
            model.volume_mu("high" if high else "low"),
            model.volume_sigma,
            math.log(lo),
            math.log(hi),
        )
        p_nec = cm.p_necrosis
    necrosis = bool(rng.random() < p_nec)
    if rng.random() < cm.p_edema:
        le = _trunc_normal(
            rng, cm.edema_log_mu, model.edema_sigma, -math.inf, math.log(model.edema_index_max - 1)
        )
        edema_index = 1.0 + math.exp(le)
    else:
        edema_index = 1.0
    cleft = bool(rng.random() < cm.p_cleft)
    capsule = bool(rng.random() < cm.p_capsule)
    texture = float(rng.normal(cm.texture_mu, 1.0))
    location = LOCATIONS[int(rng.choice(3, p=np.asarray(cm.location)))]
    feats = Features(
        ki67_high=high,
        ki67_index=ki67,
        subgroup=subgroup,
        volume_cm3=math.exp(logv),
        necrosis=necrosis,
        edema_index=edema_index,
        csf_cleft=cleft,
        capsular_enhancement=capsule,
        texture_score=texture,
        location=location,
        bayes_probability=0.0,
    )
    return _with_probability(feats, model)


def _log_norm_pdf(x: float, mu: float, s: float) -> float:
    return -0.5 * ((x - mu) / s) ** 2 - math.log(s)


def _bern(p: float, v: bool) -> float:
    return math.log(p if v else 1 - p)


def log_likelihood(feats: Features, cm: ClassModel, model: LabelModel, group: str) -> float:
    """log p(features | class) up to terms shared by both classes."""
    ll = 0.0
    logv = math.log(feats.volume_cm3)
    if feats.subgroup == "surgical":
        lo, hi = (math.log(v) for v in model.volume_range_cm3)
        mu, s = model.volume_mu(group), model.volume_sigma
        ll += _log_norm_pdf(logv, mu, s) - math.log(_phi((hi - mu) / s) - _phi((lo - mu) / s))
        ll += _bern(cm.p_necrosis, feats.necrosis)
    else:
        ll += _bern(cm.p_necrosis * model.asymptomatic_p_necrosis_scale, feats.necrosis)
    if feats.edema_index <= 1.0:
        ll += math.log(1 - cm.p_edema)
    else:
        le = math.log(feats.edema_index - 1)
        cap = math.log(model.edema_index_max - 1)
        norm = _phi((cap - cm.edema_log_mu) / model.edema_sigma)
        ll += math.log(cm.p_edema) + _log_norm_pdf(le, cm.edema_log_mu, model.edema_sigma)
        ll -= math.log(norm)
    ll += _bern(cm.p_cleft, feats.csf_cleft)
    ll += _bern(cm.p_capsule, feats.capsular_enhancement)
    ll += _log_norm_pdf(feats.texture_score, cm.texture_mu, 1.0)
    ll += math.log(cm.location[LOCATIONS.index(feats.location)])
    return ll


def posterior(feats: Features, model: LabelModel) -> float:
    """Exact P(Ki-67 high | observable features)."""
    logit = math.log(model.prevalence / (1 - model.prevalence))
    logit += log_likelihood(feats, model.high, model, "high")
    logit -= log_likelihood(feats, model.low, model, "low")
    return 1.0 / (1.0 + math.exp(-max(min(logit, 700.0), -700.0)))


def _with_probability(feats: Features, model: LabelModel) -> Features:
    from dataclasses import replace

    return replace(feats, bayes_probability=posterior(feats, model))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def population_bayes_auc(
    model: LabelModel, *, asymptomatic_fraction: float = 0.0, n: int = 200_000, seed: int = 0
) -> float:
    """Bayes-optimal AUC of the population: Monte Carlo over ``n`` label-only draws.

    Vectorised twin of :func:`draw_features` + :func:`posterior` (same
    distributions; a test checks they agree).
    """
    rng = np.random.default_rng([seed, 0xBA7E5])
    y = rng.random(n) < model.prevalence
    asym = rng.random(n) < asymptomatic_fraction
    logit = np.full(n, math.log(model.prevalence / (1 - model.prevalence)))
    cms = (model.low, model.high)

    def pick(attr: str) -> np.ndarray:
        return np.where(y, getattr(model.high, attr), getattr(model.low, attr))

    def bern_llr(v: np.ndarray, p1: float | np.ndarray, p0: float | np.ndarray) -> np.ndarray:
        return np.where(v, np.log(p1) - np.log(p0), np.log1p(-p1) - np.log1p(-p0))

    # volume (surgical subgroup only: equal in both classes for the asymptomatic one)
    lo, hi = (math.log(v) for v in model.volume_range_cm3)
    s = model.volume_sigma
    mu = {c: model.volume_mu(c) for c in ("low", "high")}
    mu_y = np.where(y, mu["high"], mu["low"])
    logv = _trunc_normal_vec(rng, mu_y, s, lo, hi)
    z = {c: math.log(_phi((hi - mu[c]) / s) - _phi((lo - mu[c]) / s)) for c in mu}
    llr_v = (-0.5 * ((logv - mu["high"]) / s) ** 2 - z["high"]) - (
        -0.5 * ((logv - mu["low"]) / s) ** 2 - z["low"]
    )
    logit += np.where(asym, 0.0, llr_v)
    scale = np.where(asym, model.asymptomatic_p_necrosis_scale, 1.0)
    p_nec = pick("p_necrosis") * scale
    nec = rng.random(n) < p_nec
    logit += bern_llr(nec, model.high.p_necrosis * scale, model.low.p_necrosis * scale)
    # edema: point mass at 1 or a truncated log-normal of (index - 1)
    has = rng.random(n) < pick("p_edema")
    cap = math.log(model.edema_index_max - 1)
    se = model.edema_sigma
    le = _trunc_normal_vec(rng, pick("edema_log_mu"), se, -np.inf, cap)
    llr_e = np.zeros(n)
    for sign, cm in ((1.0, model.high), (-1.0, model.low)):
        norm = math.log(_phi((cap - cm.edema_log_mu) / se))
        llr_e += sign * (math.log(cm.p_edema) - 0.5 * ((le - cm.edema_log_mu) / se) ** 2 - norm)
    logit += np.where(
        has, llr_e, math.log(1 - model.high.p_edema) - math.log(1 - model.low.p_edema)
    )
    for attr in ("p_cleft", "p_capsule"):
        v = rng.random(n) < pick(attr)
        logit += bern_llr(v, getattr(model.high, attr), getattr(model.low, attr))
    tex = rng.normal(pick("texture_mu"), 1.0)
    m1, m0 = model.high.texture_mu, model.low.texture_mu
    logit += (m1 - m0) * tex - 0.5 * (m1 * m1 - m0 * m0)
    u = rng.random(n)
    cum = np.stack([np.cumsum(cm.location) for cm in cms])  # [class, location]
    loc = (u[:, None] > cum[y.astype(int)]).sum(axis=1).clip(0, 2)
    logit += np.log(np.asarray(model.high.location)[loc]) - np.log(
        np.asarray(model.low.location)[loc]
    )
    return auc(logit, y)


def _trunc_normal_vec(
    rng: np.random.Generator, mu: np.ndarray, s: float, lo: float, hi: float
) -> np.ndarray:
    """Truncated normal by inverse CDF."""
    from scipy.special import ndtr, ndtri

    a = ndtr((lo - mu) / s)
    b = ndtr((hi - mu) / s)
    u = a + rng.random(np.shape(mu)) * (b - a)
    return mu + s * ndtri(np.clip(u, 1e-15, 1 - 1e-15))
