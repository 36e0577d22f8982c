"""Bjøntegaard delta rate with the ``bjontegaard`` package (PCHIP, as in the JVET CTC sheets).

:func:`bd_rate` never raises on bad curves: it returns a :class:`BDResult` whose ``value`` is
None and whose ``reason`` says why (too few points, no overlap in quality, ...). Before the
integral each curve is reduced to its Pareto front (a point that costs more bits than another
for no better quality is dropped), so PCHIP sees strictly increasing quality.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

MIN_POINTS = 4  # fewest RD points per curve for a BD-rate


@dataclass
class BDResult:
    """A BD-rate in percent (negative = test saves bits) or None with the reason."""

    value: Optional[float]  # BD-rate in %, None when it cannot be computed
    reason: str = ""  # why value is None, or a caveat (low overlap)
    overlap: Optional[float] = None  # overlap of the quality ranges / their union, in [0, 1]
    points: Tuple[int, int] = (0, 0)  # points used (anchor, test) after the Pareto reduction

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return "n/a" if self.value is None else f"{self.value:+.1f}%"


def pareto_front(rate: Sequence[float], dist: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Points sorted by rate, keeping only those that improve quality over every cheaper point."""
    r, d = np.asarray(rate, dtype=np.float64), np.asarray(dist, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(d) & (r > 0)
    r, d = r[ok], d[ok]
    order = np.lexsort((-d, r))  # by rate, best quality first on ties
    keep_r, keep_d = [], []
    for i in order:
        if not keep_d or d[i] > keep_d[-1]:
            keep_r.append(r[i])
            keep_d.append(d[i])
    return np.array(keep_r), np.array(keep_d)


def bd_rate(rate_anchor: Sequence[float], dist_anchor: Sequence[float],
            rate_test: Sequence[float], dist_test: Sequence[float],
            min_points: int = MIN_POINTS, min_overlap: float = 0.25) -> BDResult:
    """BD-rate (%) of the test curve against the anchor curve, PCHIP interpolation.

    ``rate_*``: bits per pixel (any positive rate unit, the same for both curves);
    ``dist_*``: a quality where higher is better (PSNR dB, MS-SSIM dB, VMAF).
    Example: a test curve with exactly twice the anchor's rate at every quality → +100%.
    """
    ra, da = pareto_front(rate_anchor, dist_anchor)
    rt, dt = pareto_front(rate_test, dist_test)
    pts = (len(ra), len(rt))
    if min(pts) < min_points:
        return BDResult(None, f"fewer than {min_points} monotonic points", None, pts)
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    span = max(da.max(), dt.max()) - min(da.min(), dt.min())
    overlap = max(0.0, hi - lo) / span if span > 0 else 0.0
    if hi <= lo:
        return BDResult(None, "quality ranges do not overlap", overlap, pts)
    from bjontegaard import bd_rate as _bd_rate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = _bd_rate(ra, da, rt, dt, method="pchip", require_matching_points=False, min_overlap=0.0)
    if not np.isfinite(v):
        return BDResult(None, "not finite", overlap, pts)
    reason = f"low overlap ({overlap:.0%})" if overlap < min_overlap else ""
    return BDResult(float(v), reason, overlap, pts)


def mean_bd(results: List[BDResult]) -> BDResult:
    """Average of the defined BD-rates (None when none is defined); ``points`` = (defined, total)."""
    vals = [r.value for r in results if r.value is not None]
    if not vals:
        return BDResult(None, "no sequence with a defined BD-rate", None, (0, len(results)))
    reason = "" if len(vals) == len(results) else f"mean over {len(vals)} of {len(results)} sequences"
    return BDResult(float(np.mean(vals)), reason, None, (len(vals), len(results)))
