"""The generator's frequency law in expectation: distinct values, rare lookups, calibrated supports.

A table's ids follow P(id) ~ (id + 1)^-s over a support of ``n`` rows
(``synth_model.zipf_ids``). Drawn ``N`` times, a row of probability p is seen
C ~ Poisson(Np) times, so the expected number of distinct rows seen is
sum(1 - e^-Np) and the lookups that land on rows seen 1..RARE_MAX times are
sum(Np P(Poisson(Np) <= RARE_MAX - 1)). Supports beyond 10^5 rows are summed
over 20,000 log-spaced bins.

A published table size counts the values that were *seen*, so taking it as the
law's support leaves most of the support unseen and too little mass on rare
rows. ``calibrated_support`` widens the support until the expected number of
distinct values seen equals the published size: the reading ``dlrm-mlet synth
--support calibrated`` generates from (``docs/results/criteo_regime.md``).
"""

import math
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..data.frequency import RARE_MAX
from ..errors import MLETError
from .synth_model import MISSING, NCAT, ZIPF_EXPONENT, table_sizes

CRITEO_SAMPLES = 45_840_617  # Criteo-Kaggle's train.txt
TRAIN_SHARE = 6 / 7  # DLRM trains on 6 of its 7 days
CALIBRATION_CAP = 10**4  # a support is widened at most this many times
CALIBRATED_ABOVE = 1000
SUPPORTS = ("published", "calibrated")  # tables of at most this many rows keep their size as support
_EXACT = 100_000


def missing_rates() -> np.ndarray:
    """Each table's share of missing values (a missing value is one frequent row to DLRM)."""
    rates = np.zeros(NCAT)
    for rate, _, cats in MISSING:
        rates[list(cats)] = rate
    return rates


def _rows(support):
    """Row ids (exact below _EXACT, log-spaced bin centres above) and the rows each stands for."""
    ids = np.arange(min(support, _EXACT), dtype=np.float64)
    weight = np.ones_like(ids)
    if support > _EXACT:
        edges = np.unique(np.geomspace(_EXACT, support, 20_000))
        ids = np.concatenate([ids, np.sqrt(edges[:-1] * edges[1:])])
        weight = np.concatenate([weight, np.diff(edges)])
    return ids, weight


def _poisson_at_most(lam, c):
    term, out = np.exp(-lam), np.zeros_like(lam)
    for i in range(c + 1):
        out += term
        term = term * lam / (i + 1)
    return out


def expected(support: float, lookups: float, zipf: float = ZIPF_EXPONENT) -> Tuple[float, float]:
    """(expected distinct rows seen, expected lookups on rows seen 1..RARE_MAX times) in ``lookups`` draws."""
    ids, weight = _rows(support)
    a = 1.0 - zipf
    lam = lookups * ((ids + 1) ** a - (ids + 2) ** a) / (1 - (support + 1) ** a)
    return (float(((1 - np.exp(-lam)) * weight).sum()),
            float((lam * _poisson_at_most(lam, RARE_MAX - 1) * weight).sum()))


def calibrated_support(published: float, lookups: float, zipf: float = ZIPF_EXPONENT) -> Tuple[float, bool]:
    """``(support, reached)``: the support whose expected distinct values in ``lookups`` draws is
    ``published`` (bisection in log space); at most ``CALIBRATION_CAP`` x, where ``reached`` is False."""
    cap = published * CALIBRATION_CAP
    if expected(cap, lookups, zipf)[0] < published:
        return cap, False
    lo, hi = published, cap
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if expected(mid, lookups, zipf)[0] < published else (lo, mid)
    return hi, True


def calibrated_supports(sizes: Iterable[int], samples: float, zipf: float = ZIPF_EXPONENT) -> List[Tuple[float, bool]]:
    """Per table, ``(support, reached)`` for tables of ``sizes`` seen over ``samples`` samples."""
    rates = missing_rates()
    return [calibrated_support(n, samples * (1 - rates[f]), zipf) if n > CALIBRATED_ABOVE else (n, True)
            for f, n in enumerate(sizes)]


def law_share(sizes: Sequence[int], samples: float, supports: Optional[Sequence[float]] = None,
              zipf: float = ZIPF_EXPONENT) -> Tuple[float, List[float]]:
    """Expected rare-lookup share over all tables (training split, DLRM's 6 of 7 days), and per table."""
    rates = missing_rates()
    per_table = []
    for f, n in enumerate(sizes):
        lookups = samples * TRAIN_SHARE * (1 - rates[f])
        support = int((supports or sizes)[f])
        per_table.append(expected(support, lookups, zipf)[1] / lookups if lookups else 0.0)
    weights = 1 - rates  # every sample looks each table up once; a missing value is a frequent row
    return float(np.sum(np.array(per_table) * weights) / NCAT), per_table



def supports_for(scale: float, support: str) -> List[int]:
    """The law's support per table: the tables' sizes (``published``), or each widened until the
    expected distinct values in Criteo-Kaggle's sample count times ``scale`` equal its size."""
    if support not in SUPPORTS:
        raise MLETError(f"--support must be one of {', '.join(SUPPORTS)}, got {support!r}")
    sizes = table_sizes(scale)
    if support == "published":
        return sizes
    calibrated = calibrated_supports(sizes, CRITEO_SAMPLES * scale)
    return [max(n, int(round(s))) for n, (s, _) in zip(sizes, calibrated)]
