"""The embedded default dataset: synthetic clicks in Criteo-Kaggle's text format.

The real Criteo data cannot be shipped, and uniform random data would make MLET
pointless: what MLET improves is how well embeddings are learned, rare values
above all. So the data comes from a generative model in which embedding quality
decides the score, with Criteo's layout, table sizes, skew and missing values.

Output, in OUT_DIR (written to temporary files first and renamed at the end,
``train.txt`` last, so a ``train.txt`` that exists is a finished one):

* ``train.txt``: one sample per line, 40 tab-separated fields, what DLRM's
  ``--data-set=kaggle`` reads: label, I1..I13, C1..C26; an empty field is missing.
* ``train_prob.txt``: the true click probability of each line (``%.6f``, same
  order, clipped to [0.000001, 0.999999]): the best prediction any model could
  make from the features, so reports can put the oracle next to a trained model.
* ``synth.json``: parameters and measured statistics: base CTR, the oracle's
  AUC and log loss (exact for ``train_prob.txt``, from streaming histograms) and
  the AUC of the first-order part alone (biases and dense features).

The model. Every random number is a counter-based hash (splitmix64) of (seed,
stream, row or value id): a row does not depend on the block it is made in, and
nothing per value is stored (at scale 1 the tables would hold 33M values).

* C_f is an id in ``[0, n_f)`` from a bounded power law, P(id) ~ (id + 1)^-1.1
  (the inverse CDF of the continuous law, floored): a few values are very
  frequent, most are rare. ``n_f`` is Criteo-Kaggle's table size times
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

Measured on this project's 2-core build machine with the defaults (scale 0.01,
rank 8, seed 0), 1M rows: about 100k rows/s (85k-125k over runs on a shared
machine), writing included; a worker thread formats and writes one block while
the next is generated (about 1.4x on 2 cores). Base CTR 0.253,
oracle AUC 0.843, oracle log loss 0.406, first-order AUC 0.755. Peak memory is
about 200 MB whatever the row count or scale: rows are made in blocks of 20k,
value tables up to 2^18 numbers are cached and larger ones hashed on the fly.
Files are byte-identical for the same arguments on the same numpy build and CPU
(numpy's float64 exp/log/cos may differ in the last bit between CPUs).
"""

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import MLETError
from ..progress import progress_bar

# Criteo-Kaggle (Display Advertising Challenge) table sizes, C1..C26.
CRITEO_TABLE_SIZES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
DEFAULT_SCALE = 0.01
DEFAULT_RANK = 8
ZIPF_EXPONENT = 1.1
MIN_TABLE_SIZE = 4
TARGET_CTR = 0.25
BIAS_STD = 1.5
INTERACTION_STD = 1.25
DENSE_STD = 0.6
NOISE_STD = 0.5
BLOCK_ROWS = 20_000
CALIBRATION_ROWS = 20_000
AUC_BINS = 10**6  # train_prob.txt has 6 decimals: one bin per printable value, so the AUC is exact
MAX_RANK = 1024

_NCAT, _NDENSE = 26, 13
# Dense columns: Criteo's median and 90th percentile of I1..I13, the smallest value
# (I2 goes down to -1 as in Criteo), and the correlation with the latent signal.
_DENSE = (  # (median, p90, minimum, rho)
    (1, 8, 0, 0.6), (3, 192, -1, 0.0), (7, 52, 0, 0.6), (4, 20, 0, 0.0), (2480, 32443, 0, 0.0),
    (40, 334, 0, 0.6), (3, 30, 0, 0.0), (7, 35, 0, 0.0), (41, 308, 0, 0.6), (0, 1, 0, 0.0),
    (1, 5, 0, 0.6), (0, 2, 0, 0.0), (5, 27, 0, 0.6),
)
# Missing values: (rate, dense columns, categorical columns), 0-based; the columns
# of a group go missing together. Rates measured on Criteo-Kaggle rows.
_MISSING = (
    (0.448, (0, 9), ()), (0.204, (2,), ()), (0.198, (3, 12), ()), (0.049, (4, 6, 8, 10), ()),
    (0.251, (5,), ()), (0.001, (7,), ()), (0.773, (11,), ()),
    (0.036, (), (2, 11, 15, 20, 23)), (0.133, (), (5,)), (0.450, (), (18, 19, 24, 25)),
    (0.818, (), (21,)),
)
# Per-row hash columns: 26 Zipf draws, one per missing group, 7 for 14 normals
# (13 dense, 1 logit noise), 1 for the label.
_COL_ZIPF, _COL_MISS = 0, _NCAT
_COL_NORMAL = _COL_MISS + len(_MISSING)
_COL_LABEL = _COL_NORMAL + 7
_NCOLS = _COL_LABEL + 1
_ROW_STRIDE = 64
_CALIBRATION_START = 2**47  # calibration rows live beyond any real row index
_CACHE_NUMBERS = 2**18  # cache a table's (bias, vector) when it has at most this many numbers
_MASK31 = (1 << 31) - 1
_U64 = np.uint64


def table_sizes(scale=DEFAULT_SCALE):
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


def mix_ids(ids, keys):
    """Value ids -> distinct 31-bit values in [1, 2^31 - 1) (cycle walking keeps the
    permutation a bijection on that range, so no id becomes 0 = missing)."""
    x = np.asarray(ids, dtype=np.uint64) + _U64(1)
    x = _permute31(x, keys)
    bad = ~_in_domain(x)
    while bad.any():
        x[bad] = _permute31(x[bad], keys)
        bad = ~_in_domain(x)
    return x


def unmix_ids(values, keys):
    """Inverse of :func:`mix_ids`: recovers the value id from a written category."""
    x = _unpermute31(np.asarray(values, dtype=np.uint64), keys)
    bad = ~_in_domain(x)
    while bad.any():
        x[bad] = _unpermute31(x[bad], keys)
        bad = ~_in_domain(x)
    return x - _U64(1)


# ---------------------------------------------------------------- the model


def _make_model(seed, scale, rank):
    sizes = np.array(table_sizes(scale), dtype=np.float64)
    model = {
        "seed": seed, "rank": rank, "sizes": sizes,
        "row_key": _key(seed, "rows"),
        "value_keys": [_key(seed, "value", f) for f in range(_NCAT)],
        "mix_keys": [_mix_keys(seed, f) for f in range(_NCAT)],
        "dense_w": _normals(_splitmix64(np.arange(7, dtype=np.uint64) ^ _key(seed, "dense")))[:_NDENSE],
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
    groups = len(_MISSING)
    model["miss_rate"] = np.array([g[0] for g in _MISSING] + [0.0])
    model["cat_group"] = np.full(_NCAT, groups)
    model["dense_group"] = np.full(_NDENSE, groups)
    for g, (_, dense, cat) in enumerate(_MISSING):
        model["dense_group"][list(dense)] = g
        model["cat_group"][list(cat)] = g
    model["gh_x"], model["gh_w"] = np.polynomial.hermite.hermgauss(16)
    return model


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _rows(model, start, count):
    """Features and logit parts of rows [start, start + count), before the global bias."""
    rank, sizes = model["rank"], model["sizes"]
    counters = np.arange(start, start + count, dtype=np.uint64)[:, None] * _U64(_ROW_STRIDE)
    h = _splitmix64((counters + np.arange(_NCOLS, dtype=np.uint64)) ^ model["row_key"])

    # Zipf ids: inverse CDF of the power law x^-s on [1, n + 1), floored.
    a = 1.0 - ZIPF_EXPONENT
    u = _uniform(h[:, _COL_ZIPF:_COL_ZIPF + _NCAT])
    x = np.exp(np.log(1.0 - u * (1.0 - (sizes + 1.0) ** a)) * (1.0 / a))  # log1p is 4x slower
    ids = np.minimum(x.astype(np.int64) - 1, sizes.astype(np.int64) - 1)
    np.maximum(ids, 0, out=ids)

    miss_u = np.concatenate([_uniform(h[:, _COL_MISS:_COL_NORMAL]), np.ones((count, 1))], axis=1)
    rate = model["miss_rate"]
    cat_missing = miss_u[:, model["cat_group"]] < rate[model["cat_group"]]
    dense_missing = miss_u[:, model["dense_group"]] < rate[model["dense_group"]]

    latent_sum = np.zeros((count, rank))
    square_sum = np.zeros(count)
    bias_sum = np.zeros(count)
    for f in range(_NCAT):
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
    interaction *= INTERACTION_STD / math.sqrt(_NCAT * (_NCAT - 1) // 2 * rank)

    normals = _normals(h[:, _COL_NORMAL:_COL_LABEL])
    signal = latent_sum[:, np.arange(_NDENSE) % rank] / math.sqrt(_NCAT)
    rho, mu, sigma, low = model["rho"], model["mu"], model["sigma"], model["low"]
    g = rho * signal + np.sqrt(1.0 - rho**2) * normals[:, :_NDENSE]
    raw = np.floor(np.exp(np.minimum(mu + sigma * g, 22.0)))
    dense = np.clip(raw - 1.0 + low, low, float(_MASK31)).astype(np.int64)
    standard = (np.log(dense + 1.0 - low) - mu) / sigma
    standard[dense_missing] = 0.0
    dense_term = standard @ model["dense_w"] * (DENSE_STD / math.sqrt(_NDENSE))

    first_order = bias_sum * (BIAS_STD / math.sqrt(_NCAT)) + dense_term
    return {
        "ids": ids, "cat_missing": cat_missing, "dense": dense, "dense_missing": dense_missing,
        "first_order": first_order, "logit": first_order + interaction,
        "noise": NOISE_STD * normals[:, _NDENSE], "label_u": _uniform(h[:, _COL_LABEL]),
    }


def _global_bias(model):
    """b0 with mean click rate TARGET_CTR on a fixed calibration sample (bisection)."""
    rows = _rows(model, _CALIBRATION_START, CALIBRATION_ROWS)
    z = rows["logit"] + rows["noise"]
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _sigmoid(z + mid).mean() < TARGET_CTR else (lo, mid)
    return 0.5 * (lo + hi)


def _click_probability(model, logit):
    """E[sigmoid(logit + noise)] over the Gaussian noise: what the features can tell."""
    nodes = math.sqrt(2.0) * NOISE_STD * model["gh_x"]
    return _sigmoid(logit[:, None] + nodes) @ model["gh_w"] / math.sqrt(math.pi)


# ---------------------------------------------------------------- formatting

_TAB, _NL, _ZERO, _MINUS = 9, 10, 48, 45
# Lookup tables of little-endian uint32 words: 4 hex digits for each 16-bit value, and
# 4 decimal digits for 0..9999 three ways: zero-padded, with leading zeros as NUL,
# and the same but "0" for 0 (the last chunk of a number). NULs are dropped at the end.
_HEX4 = np.frombuffer(b"".join(b"%04x" % i for i in range(1 << 16)), dtype="<u4")
_DIGITS = np.frombuffer(
    b"".join(b"%04d" % i for i in range(10_000))
    + b"".join(b"%4d" % i if i else b"    " for i in range(10_000)).replace(b" ", b"\0")
    + b"".join(b"%4d" % i for i in range(10_000)).replace(b" ", b"\0")
    + b"\0\0\0\0", dtype="<u4")
_PADDED, _UNPADDED, _LAST, _BLANK = 0, 10_000, 20_000, 30_000
_DENSE_SLOT = 12  # sign, 2 + 4 + 4 digits (int32 has at most 10), tab


def _format_lines(labels, dense, dense_missing, hexvals, cat_missing):
    """All lines of a block as bytes, without per-field Python formatting: each row
    is laid out in fixed-width slots padded with NUL bytes, which are then dropped."""
    m = len(labels)
    width = 2 + _NDENSE * _DENSE_SLOT + _NCAT * 9
    out = np.empty((m, width), dtype=np.uint8)
    out[:, 0] = _ZERO + labels
    out[:, 1] = _TAB

    mag = np.abs(dense)
    high, mid, low = mag // 10**8, mag // 10_000 % 10_000, mag % 10_000
    words = np.empty(dense.shape + (3,), dtype=np.intp)
    words[..., 0] = high + _UNPADDED
    words[..., 1] = mid + np.where(high > 0, _PADDED, _UNPADDED)
    words[..., 2] = low + np.where((high > 0) | (mid > 0), _PADDED, _LAST)
    words[dense_missing] = _BLANK
    text = np.take(_DIGITS, words).view(np.uint8).reshape(m, _NDENSE, 12)
    slots = out[:, 2:2 + _NDENSE * _DENSE_SLOT].reshape(m, _NDENSE, _DENSE_SLOT)
    slots[:, :, 0] = np.where(dense < 0, _MINUS, 0) * ~dense_missing  # NULs up to the digits vanish
    slots[:, :, 1:11] = text[:, :, 2:]  # the top chunk is at most 21: two digits
    slots[:, :, 11] = _TAB

    halves = np.ascontiguousarray(hexvals, dtype="<u4").view("<u2").reshape(m, _NCAT, 2)
    text = np.take(_HEX4, halves[:, :, ::-1]).view(np.uint8).reshape(m, _NCAT, 8)
    text[cat_missing] = 0
    cats = out[:, 2 + _NDENSE * _DENSE_SLOT:].reshape(m, _NCAT, 9)
    cats[:, :, :8] = text
    cats[:, :, 8] = _TAB
    out[:, -1] = _NL
    flat = out.ravel()
    return np.compress(flat != 0, flat).tobytes()


def _format_probs(q):
    """Probabilities as integer millionths (1..999999) -> '0.dddddd\\n' lines."""
    out = np.empty((len(q), 9), dtype=np.uint8)
    out[:, 0], out[:, 1], out[:, 8] = _ZERO, ord("."), _NL
    out[:, 2:8] = _ZERO + (q[:, None] // 10 ** np.arange(5, -1, -1)) % 10
    return out.tobytes()


def _histogram(labels, scores, bins):
    """Counts of (label, integer score): row 0 for label 0, row 1 for label 1."""
    index = labels.astype(np.int64) * bins + scores.astype(np.int64)
    return np.bincount(index, minlength=2 * bins).reshape(2, bins)


def _auc_from_histograms(counts):
    """ROC AUC of a score from its label-by-bin counts (ties count one half), the
    exact Mann-Whitney statistic over bins: streaming, with memory fixed by the bins."""
    neg, pos = counts.astype(np.float64)
    if pos.sum() == 0 or neg.sum() == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


# ---------------------------------------------------------------- writing


def _check_args(rows, seed, scale, rank):
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise MLETError(f"--rows must be a positive integer, got {rows!r}")
    if rows >= _CALIBRATION_START:
        raise MLETError(f"--rows {rows} is too large")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise MLETError(f"--rank must be an integer in 1..{MAX_RANK}, got {rank!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MLETError(f"--seed must be an integer, got {seed!r}")
    return table_sizes(scale)


def _write_block(model, train, probs, r, labels, q):
    """Format and write one block; runs in a worker thread, overlapping the next block's
    generation (numpy releases the GIL): about 1.4x on 2 cores."""
    hexvals = np.stack([mix_ids(r["ids"][:, f], model["mix_keys"][f]) for f in range(_NCAT)], axis=1)
    train.write(_format_lines(labels, r["dense"], r["dense_missing"], hexvals, r["cat_missing"]))
    probs.write(_format_probs(q))


def write_synthetic(out_dir, rows, seed=0, scale=DEFAULT_SCALE, rank=DEFAULT_RANK,
                    progress=True, force=False):
    """Write train.txt, train_prob.txt and synth.json into ``out_dir``; returns synth.json's
    content. Refuses to replace an existing train.txt unless ``force``."""
    sizes = _check_args(rows, seed, scale, rank)
    out_dir = os.fspath(out_dir)
    train_path = os.path.join(out_dir, "train.txt")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MLETError(f"{out_dir}: not a directory")
    if os.path.exists(train_path) and not force:
        raise MLETError(f"{train_path} exists; pass --force to replace it")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise MLETError(f"{out_dir}: cannot create it ({error.strerror})") from None

    model = _make_model(seed, scale, rank)
    b0 = _global_bias(model)
    block = max(1024, min(BLOCK_ROWS, 400_000 // rank))
    # Streaming statistics: label counts per printed probability give the exact AUC
    # and log loss of train_prob.txt; 10^5 bins are plenty for the first-order AUC.
    oracle, first = np.zeros((2, AUC_BINS + 1), np.int64), np.zeros((2, 10**5 + 1), np.int64)
    loss = 0.0

    temps = {}
    try:
        for name in ("train.txt", "train_prob.txt", "synth.json"):
            fd, temps[name] = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
        with open(temps["train.txt"], "wb") as train, open(temps["train_prob.txt"], "wb") as probs, \
                ThreadPoolExecutor(max_workers=1) as writer, progress_bar(rows, "synth", not progress) as bar:
            pending = None
            for start in range(0, rows, block):
                count = min(block, rows - start)
                r = _rows(model, start, count)
                logit = r["logit"] + b0
                labels = (r["label_u"] < _sigmoid(logit + r["noise"])).astype(np.uint8)
                q = np.clip(np.rint(_click_probability(model, logit) * 1e6), 1, 999_999).astype(np.int64)

                if pending is not None:
                    pending.result()  # one block in flight at most: memory stays bounded
                pending = writer.submit(_write_block, model, train, probs, r, labels, q)

                oracle += _histogram(labels, q, AUC_BINS + 1)
                first += _histogram(labels, np.rint(_sigmoid(r["first_order"] + b0) * 1e5), 10**5 + 1)
                loss -= float(np.log(np.where(labels == 1, q, 1_000_000 - q) * 1e-6).sum())
                bar.update(count)
            pending.result()
            for handle in (train, probs):
                handle.flush()
                os.fsync(handle.fileno())

        info = {
            "format": "criteo-kaggle", "generator": "dlrm-mlet synth", "version": 1,
            "rows": rows, "seed": seed, "scale": scale, "rank": rank,
            "table_sizes": sizes, "zipf_exponent": ZIPF_EXPONENT,
            "missing_rates": {
                **{f"I{j + 1}": g[0] for g in _MISSING for j in g[1]},
                **{f"C{j + 1}": g[0] for g in _MISSING for j in g[2]},
            },
            "model": {
                "global_bias": b0, "bias_std": BIAS_STD, "interaction_std": INTERACTION_STD,
                "dense_std": DENSE_STD, "noise_std": NOISE_STD, "target_ctr": TARGET_CTR,
            },
            "files": {"train": "train.txt", "prob": "train_prob.txt"},
            "base_ctr": int(oracle[1].sum()) / rows,
            "oracle_auc": _auc_from_histograms(oracle),
            "oracle_log_loss": loss / rows,
            "first_order_auc": _auc_from_histograms(first),
        }
        with open(temps["synth.json"], "w") as handle:
            json.dump(info, handle, indent=2)
            handle.write("\n")
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give them the usual mode
        for path in temps.values():
            os.chmod(path, mode)
        # train.txt goes last: it is the sign that the rest is complete
        os.replace(temps.pop("train_prob.txt"), os.path.join(out_dir, "train_prob.txt"))
        os.replace(temps.pop("synth.json"), os.path.join(out_dir, "synth.json"))
        os.replace(temps.pop("train.txt"), train_path)
    except OSError as error:
        raise MLETError(f"cannot write {out_dir}: {error.strerror or error}; no train.txt was written") from None
    finally:
        for path in temps.values():
            try:
                os.remove(path)
            except OSError:
                pass
    return info


def write_synthetic_days(out_dir, rows, days, force=False, **options):
    """Criteo-Terabyte layout: the ``rows`` samples of ``write_synthetic`` cut into day files.

    ``OUT_DIR/day_0 .. day_<days-1>`` (near-equal consecutive parts, as DLRM
    cuts Kaggle's file), beside ``train_prob.txt`` (all days in order) and
    ``synth.json``. The rows are generated into a hidden folder and copied out
    line by line; the day files are renamed into place last, ``day_0`` last of
    all, so a ``day_0`` that exists belongs to a finished set.
    """
    from ..dlrm.data import day_sizes

    out_dir = os.fspath(out_dir)
    if not 1 <= days <= 255 or rows < days:
        raise MLETError(f"--days must be 1-255 and at most --rows, got {days} days for {rows} rows")
    if os.path.exists(os.path.join(out_dir, "day_0")) and not force:
        raise MLETError(f"{os.path.join(out_dir, 'day_0')} exists; pass --force to replace it")
    try:
        os.makedirs(out_dir, exist_ok=True)
        work = tempfile.mkdtemp(dir=out_dir, prefix=".synth-days.", suffix=".tmp")
    except OSError as error:
        raise MLETError(f"{out_dir}: cannot write there ({error.strerror})") from None
    try:
        info = write_synthetic(work, rows, **options)
        sizes = day_sizes(rows, days)
        with open(os.path.join(work, "train.txt"), "rb") as source:
            for i, size in enumerate(sizes):
                with open(os.path.join(work, f"day_{i}"), "wb") as day:
                    for _ in range(size):
                        day.write(source.readline())
        os.remove(os.path.join(work, "train.txt"))
        info = dict(info, format="criteo-terabyte", days=days, day_rows=sizes,
                    files={"days": [f"day_{i}" for i in range(days)], "prob": "train_prob.txt"})
        with open(os.path.join(work, "synth.json"), "w") as handle:
            json.dump(info, handle, indent=2)
            handle.write("\n")
        for name in ["train_prob.txt", "synth.json"] + [f"day_{i}" for i in reversed(range(days))]:
            os.replace(os.path.join(work, name), os.path.join(out_dir, name))
    except OSError as error:
        raise MLETError(f"cannot write {out_dir}: {error.strerror or error}; no day_0 was written") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
