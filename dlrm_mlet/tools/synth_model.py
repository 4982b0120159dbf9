"""The generative model behind ``dlrm-mlet synth``: clicks in which embedding quality decides the score.

Uniform random data would make MLET pointless: what MLET improves is how well
embeddings are learned, rare values above all. So the rows come from a model
with Criteo's layout, table sizes, skew and missing values (``synth.py`` writes
them out as Criteo text).

The model. Every random number is a counter-based hash (splitmix64) of (seed,
stream, row or value id): a row does not depend on the block it is made in, and
nothing per value is stored (at scale 1 the tables would hold 33M values).

* C_f is an id in ``[0, n_f)`` from a bounded power law, P(id) ~ (id + 1)^-s
  with s = ``--zipf`` (1.1; the inverse CDF of the continuous law, floored): a
  few values are very frequent, most are rare. At s = 1.1 and Criteo-Kaggle's
  table sizes the law gives about the number of distinct values per table that
  the first 10,000 real Criteo-Kaggle rows hold (43,946 expected, 43,579 seen);
  a smaller s spreads lookups over more rows (s -> 0: uniform). ``n_f`` is Criteo-Kaggle's table size times
  ``--scale``, at least min(Criteo's size, 4). Features go missing at Criteo's
  rates, in groups that go missing together (as C19/C20/C25/C26 do).
* Each (feature, value) has a bias and a latent vector of size ``--rank``,
  standard normal (Box-Muller on the hash of (seed, feature, id)).
* I1..I13 are heavy-tailed counts, floor(exp(mu + sigma * g)) - 1, with Criteo's
  medians and 90th percentiles; for six of them g is correlated (0.6) with a
  coordinate of the row's summed latent vectors, so the dense features carry
  part of the categorical signal, as in real logs.
* logit = b0 + BIAS_STD * sum_f bias_f / sqrt(26)
        + INTERACTION_STD * sum_{f<g} <v_f, v_g> / sqrt(325 * rank)  (FM-style)
        + DENSE_STD * sum_j w_j * standardized log(1 + I_j) / sqrt(13)
        + NOISE_STD * N(0, 1);
  label ~ Bernoulli(sigmoid(logit)). The noise stands for causes no feature
  shows; the written probability is the expectation over it (Gauss-Hermite,
  exact to ~1e-7). b0 is solved for on a fixed calibration sample so the base
  CTR is about 0.25. A missing categorical contributes nothing, a missing dense
  value its mean.

Why these weights: with the interactions dominating (bias 1.0, interaction 1.5)
the oracle AUC was 0.83 but a 1-epoch DLRM-style model on 160k rows learned
only 0.64; with 1.5 / 1.25 the first-order part alone gives AUC 0.75, the
oracle 0.84 and that model 0.69 (d = 2) to 0.70 (d = 16): most of the signal is
learnable, and the interactions that only good embeddings capture are worth
about 0.09 AUC.

Categorical values are ``%08x`` of a keyed invertible mix of the id over
[1, 2^31 - 1): unique within a feature, Criteo-looking, never 0 (DLRM reads a
missing value as 0), and below 2^31 - 1, so they fit DLRM's int32 arrays on
numpy 2 and stay distinct under ``--max-ind-range=2147483647``.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from ..errors import MLETError

# Criteo-Kaggle (Display Advertising Challenge) table sizes, C1..C26.
CRITEO_TABLE_SIZES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
DEFAULT_SCALE = 0.01
DEFAULT_RANK = 8
ZIPF_EXPONENT = 1.1
MAX_ZIPF = 5.0
MIN_TABLE_SIZE = 4
TARGET_CTR = 0.25
BIAS_STD = 1.5
INTERACTION_STD = 1.25
DENSE_STD = 0.6
NOISE_STD = 0.5
CALIBRATION_ROWS = 20_000
MAX_RANK = 1024

NCAT, NDENSE = 26, 13
# Dense columns: Criteo's median and 90th percentile of I1..I13, the smallest value
# (I2 goes down to -1 as in Criteo), and the correlation with the latent signal.
_DENSE = (  # (median, p90, minimum, rho)
    (1, 8, 0, 0.6), (3, 192, -1, 0.0), (7, 52, 0, 0.6), (4, 20, 0, 0.0), (2480, 32443, 0, 0.0),
    (40, 334, 0, 0.6), (3, 30, 0, 0.0), (7, 35, 0, 0.0), (41, 308, 0, 0.6), (0, 1, 0, 0.0),
    (1, 5, 0, 0.6), (0, 2, 0, 0.0), (5, 27, 0, 0.6),
)
# Missing values: (rate, dense columns, categorical columns), 0-based; the columns
# of a group go missing together. Rates measured on Criteo-Kaggle rows.
MISSING = (
    (0.448, (0, 9), ()), (0.204, (2,), ()), (0.198, (3, 12), ()), (0.049, (4, 6, 8, 10), ()),
    (0.251, (5,), ()), (0.001, (7,), ()), (0.773, (11,), ()),
    (0.036, (), (2, 11, 15, 20, 23)), (0.133, (), (5,)), (0.450, (), (18, 19, 24, 25)),
    (0.818, (), (21,)),
)
# Per-row hash columns: 26 Zipf draws, one per missing group, 7 for 14 normals
# (13 dense, 1 logit noise), 1 for the label.
_COL_ZIPF, _COL_MISS = 0, NCAT
_COL_NORMAL = _COL_MISS + len(MISSING)
_COL_LABEL = _COL_NORMAL + 7
_NCOLS = _COL_LABEL + 1
_ROW_STRIDE = 64
CALIBRATION_START = 2**47  # calibration rows live beyond any real row index
_CACHE_NUMBERS = 2**18  # cache a table's (bias, vector) when it has at most this many numbers
_MASK31 = (1 << 31) - 1
_U64 = np.uint64
# The generator's parameters (``make_model``): seed, rank, table sizes (the law's supports), Zipf exponent,
# hash keys, dense-feature law, missing-value groups, cached per-value parameters, Gauss-Hermite nodes
Model = Dict[str, Any]
MixKeys = Tuple[int, int, int, int]  # one feature's id mix: xor key and three odd multipliers mod 2^31


def table_sizes(scale: float = DEFAULT_SCALE) -> List[int]:
    """Criteo-Kaggle's table sizes times ``scale``; small tables stay usable (>= min(size, 4))."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise MLETError(f"--scale must be a number > 0, got {scale!r}")
    sizes = [max(math.ceil(n * scale), min(n, MIN_TABLE_SIZE)) for n in CRITEO_TABLE_SIZES]
    if max(sizes) >= _MASK31 - 1:
        raise MLETError(f"--scale {scale} is too large: table sizes must stay below 2^31 - 2")
    return sizes


# ---------------------------------------------------------------- hashing


def _splitmix64(x):
    """splitmix64's finalizer on a uint64 array: a counter-based RNG, so any row or
    value can be regenerated alone, in any order, with no state."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def _key(seed, *path):
    """A 64-bit key for one random stream, e.g. (seed, 'rows') or (seed, 'value', f)."""
    k = np.array([seed % 2**64], dtype=np.uint64)
    for part in path:
        if isinstance(part, str):
            part = int.from_bytes(part.encode()[:8].ljust(8, b"\0"), "little")
        k = _splitmix64(k ^ _splitmix64(np.array([part], dtype=np.uint64)))
    return k[0]


def _uniform(h):
    return (h >> _U64(11)).astype(np.float64) * 2.0**-53


def _normals(h):
    """Two standard normals per hash (Box-Muller on its two 32-bit halves), last axis doubled."""
    halves = np.ascontiguousarray(h, dtype="<u8").view("<u4")  # uint32 -> float64 is fast
    u1 = (halves[..., 1::2] + 0.5) * 2.0**-32  # high word
    u2 = (halves[..., 0::2] + 0.5) * 2.0**-32
    r = np.sqrt(-2.0 * np.log(u1))
    cos = np.cos(2.0 * np.pi * u2)
    sin = np.copysign(np.sqrt(1.0 - cos * cos), 0.5 - u2)  # cheaper than np.sin
    return np.concatenate([r * cos, r * sin], axis=-1)


def _value_params(key, ids, rank):
    """(bias, latent vector) of values ``ids`` of one feature, from their hashes."""
    nh = (rank + 2) // 2
    counters = (ids.astype(np.uint64) * _U64(nh))[:, None] + np.arange(nh, dtype=np.uint64)
    z = _normals(_splitmix64(counters ^ key))
    return z[:, 0], z[:, 1:rank + 1]


# ------------------------------------------------- invertible id -> hex value


def _mix_keys(seed, feature):
    """Per-feature constants of the id mix: xor key and three odd multipliers mod 2^31."""
    k1, k2 = (int(_key(seed, "hexmix", feature, i)) for i in (0, 1))
    return k1 & _MASK31, (k1 >> 32) & _MASK31 | 1, k2 & _MASK31 | 1, (k2 >> 32) & _MASK31 | 1


def _permute31(x, keys):
    xor, m1, m2, m3 = (_U64(k) for k in keys)
    x = x ^ xor
    x = (x * m1) & _U64(_MASK31)
    x ^= x >> _U64(16)
    x = (x * m2) & _U64(_MASK31)
    x ^= x >> _U64(13)
    x = (x * m3) & _U64(_MASK31)
    x ^= x >> _U64(16)
    return x


def _unxorshift(x, s):
    y = x.copy()
    for _ in range(31 // s + 1):
        y = x ^ (y >> _U64(s))
    return y


def _unpermute31(x, keys):
    xor, m1, m2, m3 = keys
    inv = [_U64(pow(m, -1, 1 << 31)) for m in (m1, m2, m3)]
    x = _unxorshift(x, 16)
    x = (x * inv[2]) & _U64(_MASK31)
    x = _unxorshift(x, 13)
    x = (x * inv[1]) & _U64(_MASK31)
    x = _unxorshift(x, 16)
    x = (x * inv[0]) & _U64(_MASK31)
    return x ^ _U64(xor)


def _in_domain(x):
    return (x >= _U64(1)) & (x < _U64(_MASK31))


def mix_ids(ids: npt.ArrayLike, keys: MixKeys) -> np.ndarray:
    """Value ids -> distinct 31-bit values in [1, 2^31 - 1) (cycle walking keeps the
    permutation a bijection on that range, so no id becomes 0 = missing)."""
    x = np.asarray(ids, dtype=np.uint64) + _U64(1)
    x = _permute31(x, keys)
    bad = ~_in_domain(x)
    while bad.any():
        x[bad] = _permute31(x[bad], keys)
        bad = ~_in_domain(x)
    return x


def unmix_ids(values: npt.ArrayLike, keys: MixKeys) -> np.ndarray:
    """Inverse of :func:`mix_ids`: recovers the value id from a written category."""
    x = _unpermute31(np.asarray(values, dtype=np.uint64), keys)
    bad = ~_in_domain(x)
    while bad.any():
        x[bad] = _unpermute31(x[bad], keys)
        bad = ~_in_domain(x)
    return x - _U64(1)


# ---------------------------------------------------------------- the model


def check_zipf(zipf: float) -> float:
    if isinstance(zipf, bool) or not isinstance(zipf, (int, float)) or not 0 < zipf <= MAX_ZIPF:
        raise MLETError(f"--zipf must be a number in (0, {MAX_ZIPF:g}], got {zipf!r}")
    return float(zipf)


def zipf_ids(u: np.ndarray, sizes: np.ndarray, zipf: float) -> np.ndarray:
    """Ids in ``[0, n)`` from uniforms ``u``: the floored inverse CDF of x^-s on [1, n + 1)."""
    if zipf == 1.0:
        x = np.exp(u * np.log(sizes + 1.0))
    else:
        a = 1.0 - zipf
        # log, not log1p: the cheaper one, and flooring to an id hides its rounding near u = 0
        x = np.exp(np.log(1.0 - u * (1.0 - (sizes + 1.0) ** a)) * (1.0 / a))
    ids = np.minimum(x.astype(np.int64) - 1, sizes.astype(np.int64) - 1)
    return np.maximum(ids, 0, out=ids)


def zipf_probabilities(n: int, zipf: float) -> np.ndarray:
    """P(id = i) for i in ``[0, n)``: what :func:`zipf_ids` draws, exactly."""
    i = np.arange(n, dtype=np.float64)
    if zipf == 1.0:
        return (np.log(i + 2.0) - np.log(i + 1.0)) / np.log(n + 1.0)
    a = 1.0 - zipf
    return ((i + 1.0) ** a - (i + 2.0) ** a) / (1.0 - (n + 1.0) ** a)


def make_model(seed: int, scale: float, rank: int, zipf: float = ZIPF_EXPONENT,
               supports: Optional[Sequence[float]] = None) -> Model:
    """The generator's parameters. ``supports`` (one per table) replaces the tables' sizes as the
    law's supports, e.g. ``synth_law.calibrated_supports``: ids may then exceed 2^31 (processed form only)."""
    sizes = np.array(table_sizes(scale) if supports is None else supports, dtype=np.float64)
    model = {
        "seed": seed, "rank": rank, "sizes": sizes, "zipf": check_zipf(zipf),
        "row_key": _key(seed, "rows"),
        "value_keys": [_key(seed, "value", f) for f in range(NCAT)],
        "mix_keys": [_mix_keys(seed, f) for f in range(NCAT)],
        "dense_w": _normals(_splitmix64(np.arange(7, dtype=np.uint64) ^ _key(seed, "dense")))[:NDENSE],
        "cache": {},
    }
    for f, n in enumerate(sizes.astype(np.int64)):
        if n * (rank + 1) <= _CACHE_NUMBERS:
            bias, vec = _value_params(model["value_keys"][f], np.arange(n), rank)
            bias, vec = np.append(bias, 0.0), np.vstack([vec, np.zeros(rank)])
            model["cache"][f] = bias, vec, np.einsum("ij,ij->i", vec, vec)
    median, p90, low, rho = (np.array(c, dtype=np.float64) for c in zip(*_DENSE))
    model["mu"] = np.log(median + 1 - low)
    model["sigma"] = np.log((p90 + 1 - low) / (median + 1 - low)) / 1.2815515655446004
    model["low"], model["rho"] = low, rho
    groups = len(MISSING)
    model["miss_rate"] = np.array([g[0] for g in MISSING] + [0.0])
    model["cat_group"] = np.full(NCAT, groups)
    model["dense_group"] = np.full(NDENSE, groups)
    for g, (_, dense, cat) in enumerate(MISSING):
        model["dense_group"][list(dense)] = g
        model["cat_group"][list(cat)] = g
    model["gh_x"], model["gh_w"] = np.polynomial.hermite.hermgauss(16)
    return model


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _row_hashes(model, start, count, first, last):
    """Hash columns ``first..last-1`` of rows [start, start + count): one independent stream each."""
    counters = np.arange(start, start + count, dtype=np.uint64)[:, None] * _U64(_ROW_STRIDE)
    return _splitmix64((counters + np.arange(first, last, dtype=np.uint64)) ^ model["row_key"])


def categorical_ids(model: Model, start: int, count: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, cat_missing, dense_missing)`` of rows [start, start + count): each feature's value id
    (rows x 26, int64) and which categorical and dense values are missing. Cheap next to
    ``generate_rows``: no per-value parameters."""
    h = _row_hashes(model, start, count, _COL_ZIPF, _COL_NORMAL)
    ids = zipf_ids(_uniform(h[:, _COL_ZIPF:_COL_ZIPF + NCAT]), model["sizes"], model["zipf"])
    miss_u = np.concatenate([_uniform(h[:, _COL_MISS:_COL_NORMAL]), np.ones((count, 1))], axis=1)
    rate = model["miss_rate"]
    cat_missing = miss_u[:, model["cat_group"]] < rate[model["cat_group"]]
    dense_missing = miss_u[:, model["dense_group"]] < rate[model["dense_group"]]
    return ids, cat_missing, dense_missing


def generate_rows(model: Model, start: int, count: int) -> Dict[str, np.ndarray]:
    """Features and logit parts of rows [start, start + count), before the global bias."""
    rank = model["rank"]
    ids, cat_missing, dense_missing = categorical_ids(model, start, count)
    h = _row_hashes(model, start, count, _COL_NORMAL, _NCOLS)

    latent_sum = np.zeros((count, rank))
    square_sum = np.zeros(count)
    bias_sum = np.zeros(count)
    for f in range(NCAT):
        missing = cat_missing[:, f]
        if f in model["cache"]:
            bias, vec, square = model["cache"][f]
            idx = np.where(missing, len(bias) - 1, ids[:, f])  # the last row is all zeros
            latent_sum += np.take(vec, idx, axis=0)
            square_sum += np.take(square, idx)
            bias_sum += np.take(bias, idx)
        else:  # hash each distinct value once: Zipf rows repeat values a lot
            distinct, where = np.unique(ids[:, f], return_inverse=True)
            bias, vec = _value_params(model["value_keys"][f], distinct, rank)
            bias, vec = np.take(bias, where), np.take(vec, where, axis=0)
            vec *= ~missing[:, None]
            latent_sum += vec
            square_sum += np.einsum("ij,ij->i", vec, vec)
            bias_sum += bias * ~missing
    interaction = 0.5 * (np.einsum("ij,ij->i", latent_sum, latent_sum) - square_sum)
    interaction *= INTERACTION_STD / math.sqrt(NCAT * (NCAT - 1) // 2 * rank)

    normals = _normals(h[:, :_COL_LABEL - _COL_NORMAL])
    signal = latent_sum[:, np.arange(NDENSE) % rank] / math.sqrt(NCAT)
    rho, mu, sigma, low = model["rho"], model["mu"], model["sigma"], model["low"]
    g = rho * signal + np.sqrt(1.0 - rho**2) * normals[:, :NDENSE]
    raw = np.floor(np.exp(np.minimum(mu + sigma * g, 22.0)))
    dense = np.clip(raw - 1.0 + low, low, float(_MASK31)).astype(np.int64)
    standard = (np.log(dense + 1.0 - low) - mu) / sigma
    standard[dense_missing] = 0.0
    dense_term = standard @ model["dense_w"] * (DENSE_STD / math.sqrt(NDENSE))

    first_order = bias_sum * (BIAS_STD / math.sqrt(NCAT)) + dense_term
    return {
        "ids": ids, "cat_missing": cat_missing, "dense": dense, "dense_missing": dense_missing,
        "first_order": first_order, "logit": first_order + interaction,
        "noise": NOISE_STD * normals[:, NDENSE], "label_u": _uniform(h[:, _COL_LABEL - _COL_NORMAL]),
    }


def global_bias(model: Model) -> float:
    """b0 with mean click rate TARGET_CTR on a fixed calibration sample (bisection)."""
    rows = generate_rows(model, CALIBRATION_START, CALIBRATION_ROWS)
    z = rows["logit"] + rows["noise"]
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sigmoid(z + mid).mean() < TARGET_CTR else (lo, mid)
    return 0.5 * (lo + hi)


def click_probability(model: Model, logit: np.ndarray) -> np.ndarray:
    """E[sigmoid(logit + noise)] over the Gaussian noise: what the features can tell."""
    nodes = math.sqrt(2.0) * NOISE_STD * model["gh_x"]
    return sigmoid(logit[:, None] + nodes) @ model["gh_w"] / math.sqrt(math.pi)

