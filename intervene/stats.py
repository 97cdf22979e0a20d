"""Statistics: every number's spread over examples, and KL between next-token distributions.

What it owns, for the whole library (no other module resamples or computes a KL):

* :class:`Stat` — a mean over examples with its 95% interval and the per-example values.
* :class:`Resampler` — one seeded matrix of resampled example indices (``n_boot`` × n, drawn
  as ``default_rng(seed).integers(0, n, (n_boot, n))``). Every quantity bootstrapped through
  one resampler is resampled *jointly*: a ratio's numerator and denominator use the same
  resampled examples. Its :class:`Estimate` s carry point value, per-example values and
  bootstrap replicates; the interval is the 2.5 and 97.5 percentiles of the finite replicates.
* :func:`bootstrap` — the mean of per-example values with its interval.
* :func:`normalised` — the ratio of mean differences ``(E[x] − E[lo]) / (E[hi] − E[lo])``,
  bootstrapped jointly. The patching normalisation (x patched, lo clean, hi source), loss
  recovered (x scrubbed, lo random, hi model) and faithfulness (x m(C), lo m(∅), hi m(M)) are
  all this one function.
* :func:`kl` — KL(p ‖ q) per row from two rows of logits, in nats, in float32.

Only numpy is imported; :func:`kl` calls tensor methods on what it is given (torch tensors),
so this module stays importable where torch is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

N_BOOT = 1000
TINY = 1e-12  # |E[hi] − E[lo]| at or below this: :func:`normalised` is undefined


@dataclass
class Stat:
    """A mean over examples with a 95% bootstrap interval (and the per-example values)."""

    mean: float
    lo: float
    hi: float
    values: list[float] = field(repr=False, default_factory=list)

    def __str__(self) -> str:
        return f"{self.mean:.3g} [{self.lo:.3g}, {self.hi:.3g}]"


def interval(replicates: np.ndarray) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the finite bootstrap replicates (NaN when none is)."""
    b = replicates[np.isfinite(replicates)]
    if not len(b):
        return float("nan"), float("nan")
    return float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))


class Estimate:
    """A per-example quantity: point value, per-example values and bootstrap replicates."""

    def __init__(self, point: float, per_example: np.ndarray, replicates: np.ndarray) -> None:
        self.point, self.per_example, self.replicates = float(point), per_example, replicates

    def __sub__(self, other: Estimate) -> Estimate:
        return Estimate(self.point - other.point, self.per_example - other.per_example,
                        self.replicates - other.replicates)

    def stat(self) -> Stat:
        lo, hi = interval(self.replicates)
        return Stat(self.point, lo, hi, self.per_example.tolist())

    def abs_stat(self) -> Stat:
        """|point| with the image under |·| of the signed percentile interval ([0, max(|lo|, |hi|)]
        when it straddles 0), so it contains |d| whenever the signed one contains d; the
        per-example values are signed so that they average to |point|."""
        lo, hi = interval(self.replicates)
        if lo <= 0 <= hi:
            alo, ahi = 0.0, max(-lo, hi)
        else:
            alo, ahi = min(abs(lo), abs(hi)), max(abs(lo), abs(hi))
        sign = -1.0 if self.point < 0 else 1.0
        return Stat(abs(self.point), alo, ahi, (sign * self.per_example).tolist())


class Resampler:
    """One seeded matrix of resampled example indices, shared by every quantity it bootstraps."""

    def __init__(self, n: int, seed: int, n_boot: int = N_BOOT) -> None:
        if n < 1 or n_boot < 1:
            raise ValueError(f"need at least one example and one replicate (got n={n}, n_boot={n_boot})")
        self.n = n
        self.idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        self._means: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _check(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (self.n,):
            raise ValueError(f"expected one value per example ({self.n}), got shape {v.shape}")
        return v

    def replicates(self, v: np.ndarray) -> np.ndarray:
        """The mean of ``v`` over each resample (cached per array; the array is kept alive)."""
        hit = self._means.get(id(v))
        if hit is not None and hit[0] is v:
            return hit[1]
        means = self._check(v)[self.idx].mean(1)
        self._means[id(v)] = (v, means)
        return means

    def mean(self, v: np.ndarray) -> Estimate:
        v = self._check(v)
        return Estimate(float(v.mean()), v, self.replicates(v))

    def normalised(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Estimate:
        """(E[x] − E[lo]) / (E[hi] − E[lo]), jointly resampled; per example (x − lo) / that
        denominator. The caller decides when the denominator is too small to mean anything."""
        x, lo, hi = self._check(x), self._check(lo), self._check(hi)
        denom = float(hi.mean()) - float(lo.mean())
        bl = self.replicates(lo)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = (self.replicates(x) - bl) / (self.replicates(hi) - bl)
            per_ex = (x - lo) / denom
        return Estimate((float(x.mean()) - float(lo.mean())) / denom, per_ex, boot)

    def ratio(self, x: np.ndarray, y: np.ndarray) -> Estimate:
        """E[x] / E[y], jointly resampled; per example x / E[y]."""
        x, y = self._check(x), self._check(y)
        my = float(y.mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = self.replicates(x) / self.replicates(y)
            per_ex = x / my
        return Estimate(float(x.mean()) / my, per_ex, boot)


def bootstrap(values: np.ndarray, seed: int, n_boot: int = N_BOOT) -> Stat:
    """Mean and seeded 95% percentile bootstrap interval of per-example values."""
    v = np.asarray(values, dtype=np.float64)
    return Resampler(len(v), seed, n_boot).mean(v).stat()


def normalised(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, seed: int, n_boot: int = N_BOOT) -> Stat | None:
    """(E[x] − E[lo]) / (E[hi] − E[lo]) bootstrapped jointly; None when E[hi] ≈ E[lo]."""
    lo_ = np.asarray(lo, dtype=np.float64)
    hi_ = np.asarray(hi, dtype=np.float64)
    if abs(hi_.mean() - lo_.mean()) < TINY:
        return None
    return Resampler(len(lo_), seed, n_boot).normalised(np.asarray(x, dtype=np.float64), lo_, hi_).stat()


def spread(values: list[float] | np.ndarray) -> dict[str, float]:
    """How per-example values are spread: the 10th, 50th and 90th percentiles and the
    fractions below 0 and above 1 (for fractions such as loss recovered)."""
    v = np.asarray(values, dtype=np.float64)
    out = {q: float(np.percentile(v, p)) for q, p in (("p10", 10), ("p50", 50), ("p90", 90))}
    out["frac_below_0"] = float((v < 0).mean())
    out["frac_above_1"] = float((v > 1).mean())
    return out


def kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p ‖ q) per row of next-token distributions given as logits [..., V], in nats (float32)."""
    lp = p_logits.float().log_softmax(-1)
    lq = q_logits.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)
