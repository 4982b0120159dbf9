"""``dlrm-mlet synth``: the embedded default dataset, synthetic clicks in Criteo-Kaggle's text format.

The real Criteo data cannot be shipped; ``synth_model.py`` is the generative
model (Criteo's layout, table sizes, skew and missing values, with embedding
quality deciding the score). This module formats its rows and writes them.

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


A worker thread formats and writes one block while the next is generated, so
both cores work. With the defaults (scale 0.01, rank 8, seed 0): base CTR
0.253, oracle AUC 0.843, oracle log loss 0.406, first-order AUC 0.755. Peak
memory is about 200 MB whatever the row count or scale: rows are made in blocks of 20k,
value tables up to 2^18 numbers are cached and larger ones hashed on the fly.
Files are byte-identical for the same arguments on the same numpy build and CPU
(numpy's float64 exp/log/cos may differ in the last bit between CPUs).
"""

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Tuple, cast

import numpy as np

from ..data.days import day_sizes
from ..errors import MLETError
from ..files import StagedFiles, StrPath
from ..progress import progress_bar
from .synth_law import supports_for
from .synth_model import (
    BIAS_STD,
    CALIBRATION_START,
    DEFAULT_RANK,
    DEFAULT_SCALE,
    DENSE_STD,
    INTERACTION_STD,
    MAX_RANK,
    MISSING,
    NCAT,
    NDENSE,
    NOISE_STD,
    TARGET_CTR,
    ZIPF_EXPONENT,
    Model,
    check_zipf,
    click_probability,
    generate_rows,
    global_bias,
    make_model,
    mix_ids,
    sigmoid,
    table_sizes,
)

BLOCK_ROWS = 20_000
MAX_TEXT_SUPPORT = 2**31 - 2  # written values are ids mixed over [1, 2^31 - 1)
AUC_BINS = 10**6  # train_prob.txt has 6 decimals: one bin per printable value, so the AUC is exact

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
    width = 2 + NDENSE * _DENSE_SLOT + NCAT * 9
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
    text = np.take(_DIGITS, words).view(np.uint8).reshape(m, NDENSE, 12)
    slots = out[:, 2:2 + NDENSE * _DENSE_SLOT].reshape(m, NDENSE, _DENSE_SLOT)
    slots[:, :, 0] = np.where(dense < 0, _MINUS, 0) * ~dense_missing  # NULs up to the digits vanish
    slots[:, :, 1:11] = text[:, :, 2:]  # the top chunk is at most 21: two digits
    slots[:, :, 11] = _TAB

    halves = np.ascontiguousarray(hexvals, dtype="<u4").view("<u2").reshape(m, NCAT, 2)
    text = np.take(_HEX4, halves[:, :, ::-1]).view(np.uint8).reshape(m, NCAT, 8)
    text[cat_missing] = 0
    cats = out[:, 2 + NDENSE * _DENSE_SLOT:].reshape(m, NCAT, 9)
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


class Statistics:
    """Streaming label statistics of a synthetic set: the exact AUC and log loss of the true
    probabilities (label counts per printed probability) and the AUC of the first-order part
    alone (10^5 bins are plenty), with memory fixed by the bins."""

    def __init__(self) -> None:
        self.oracle = np.zeros((2, AUC_BINS + 1), np.int64)
        self.first = np.zeros((2, 10**5 + 1), np.int64)
        self.loss = 0.0

    def add(self, labels: np.ndarray, q: np.ndarray, first_order_logit: np.ndarray) -> None:
        """One block: its labels, true probabilities in millionths, first-order logits."""
        self.oracle += _histogram(labels, q, AUC_BINS + 1)
        self.first += _histogram(labels, np.rint(sigmoid(first_order_logit) * 1e5), 10**5 + 1)
        self.loss -= float(np.log(np.where(labels == 1, q, 1_000_000 - q) * 1e-6).sum())

    def record(self, rows: int) -> Dict[str, Optional[float]]:
        return {"base_ctr": int(self.oracle[1].sum()) / rows, "oracle_auc": _auc_from_histograms(self.oracle),
                "oracle_log_loss": self.loss / rows, "first_order_auc": _auc_from_histograms(self.first)}


def labelled(model: Model, r: Mapping[str, np.ndarray], b0: float) -> Tuple[np.ndarray, np.ndarray]:
    """A block's labels (uint8) and true click probabilities in millionths (1..999999)."""
    logit = r["logit"] + b0
    labels = (r["label_u"] < sigmoid(logit + r["noise"])).astype(np.uint8)
    return labels, np.clip(np.rint(click_probability(model, logit) * 1e6), 1, 999_999).astype(np.int64)


def model_record(model: Model, b0: float) -> Dict[str, Any]:
    """What synth.json says of the generator's parameters."""
    return {
        "zipf_exponent": model["zipf"],
        "missing_rates": {
            **{f"I{j + 1}": g[0] for g in MISSING for j in g[1]},
            **{f"C{j + 1}": g[0] for g in MISSING for j in g[2]},
        },
        "model": {
            "global_bias": b0, "bias_std": BIAS_STD, "interaction_std": INTERACTION_STD,
            "dense_std": DENSE_STD, "noise_std": NOISE_STD, "target_ctr": TARGET_CTR,
        },
    }


# ---------------------------------------------------------------- writing


def check_args(rows: int, seed: int, scale: float, rank: int, zipf: float) -> List[int]:
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise MLETError(f"--rows must be a positive integer, got {rows!r}")
    if rows >= CALIBRATION_START:
        raise MLETError(f"--rows {rows} is too large")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise MLETError(f"--rank must be an integer in 1..{MAX_RANK}, got {rank!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MLETError(f"--seed must be an integer, got {seed!r}")
    check_zipf(zipf)
    return table_sizes(scale)


def _write_block(model, train, probs, r, labels, q):
    """Format and write one block; runs in a worker thread, overlapping the next block's
    generation (numpy releases the GIL)."""
    hexvals = np.stack([mix_ids(r["ids"][:, f], model["mix_keys"][f]) for f in range(NCAT)], axis=1)
    train.write(_format_lines(labels, r["dense"], r["dense_missing"], hexvals, r["cat_missing"]))
    probs.write(_format_probs(q))


def write_synthetic(out_dir: StrPath, rows: int, seed: int = 0, scale: float = DEFAULT_SCALE,
                    rank: int = DEFAULT_RANK, zipf: float = ZIPF_EXPONENT, progress: bool = True, force: bool = False,
                    support: str = "published") -> Dict[str, Any]:
    """Write train.txt, train_prob.txt and synth.json into ``out_dir``; returns synth.json's
    content. Refuses to replace an existing train.txt unless ``force``."""
    sizes = check_args(rows, seed, scale, rank, zipf)
    supports = supports_for(scale, support)
    if max(supports) >= MAX_TEXT_SUPPORT:
        raise MLETError(f"--support {support} at --scale {scale:g} makes values beyond the 31 bits Criteo's text "
                        "holds; write DLRM's processed file instead (--processed)")
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

    model = make_model(seed, scale, rank, zipf, supports=supports)
    b0 = global_bias(model)
    block = max(1024, min(BLOCK_ROWS, 400_000 // rank))
    stats = Statistics()

    with StagedFiles(out_dir, "synth", f"cannot write {out_dir}", "no train.txt was written") as stage:
        with open(stage.path("train.txt"), "wb") as train, open(stage.path("train_prob.txt"), "wb") as probs, \
                ThreadPoolExecutor(max_workers=1) as writer, progress_bar(rows, "synth", not progress) as bar:
            pending = None
            for start in range(0, rows, block):
                count = min(block, rows - start)
                r = generate_rows(model, start, count)
                labels, q = labelled(model, r, b0)

                if pending is not None:
                    pending.result()  # one block in flight at most: memory stays bounded
                pending = writer.submit(_write_block, model, train, probs, r, labels, q)
                stats.add(labels, q, r["first_order"] + b0)
                bar.update(count)
            cast(Future, pending).result()  # rows >= 1 (check_args): a block was submitted

        info = {
            "format": "criteo-kaggle", "generator": "dlrm-mlet synth", "version": 1,
            "rows": rows, "seed": seed, "scale": scale, "rank": rank,
            "table_sizes": sizes, **({"support": support, "supports": supports} if support != "published" else {}), **model_record(model, b0), **stats.record(rows),
            "files": {"train": "train.txt", "prob": "train_prob.txt"},
        }
        _write_json(stage.path("synth.json"), info)
        # train.txt goes last: it is the sign that the rest is complete
        stage.publish((stage.path(name), os.path.join(out_dir, name))
                      for name in ("train_prob.txt", "synth.json", "train.txt"))
    return info


def write_synthetic_days(out_dir: StrPath, rows: int, days: int, force: bool = False,
                         **options: Any) -> Dict[str, Any]:
    """Criteo-Terabyte layout: the ``rows`` samples of ``write_synthetic`` cut into day files.

    ``OUT_DIR/day_0 .. day_<days-1>`` (near-equal consecutive parts, as DLRM
    cuts Kaggle's file), beside ``train_prob.txt`` (all days in order) and
    ``synth.json``. The rows are generated into a hidden folder and copied out
    line by line; the day files are renamed into place last, ``day_0`` last of
    all, so a ``day_0`` that exists belongs to a finished set.
    """
    out_dir = os.fspath(out_dir)
    if not 1 <= days <= 255 or rows < days:
        raise MLETError(f"--days must be 1-255 and at most --rows, got {days} days for {rows} rows")
    if os.path.exists(os.path.join(out_dir, "day_0")) and not force:
        raise MLETError(f"{os.path.join(out_dir, 'day_0')} exists; pass --force to replace it")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise MLETError(f"{out_dir}: cannot write there ({error.strerror})") from None
    with StagedFiles(out_dir, "synth-days", f"cannot write {out_dir}", "no day_0 was written") as stage:
        info = write_synthetic(stage.folder, rows, **options)
        sizes = day_sizes(rows, days)
        with open(stage.path("train.txt"), "rb") as source:
            for i, size in enumerate(sizes):
                with open(stage.path(f"day_{i}"), "wb") as day:
                    for _ in range(size):
                        day.write(source.readline())
        os.remove(stage.path("train.txt"))
        info = dict(info, format="criteo-terabyte", days=days, day_rows=sizes,
                    files={"days": [f"day_{i}" for i in range(days)], "prob": "train_prob.txt"})
        _write_json(stage.path("synth.json"), info)
        names = ["train_prob.txt", "synth.json"] + [f"day_{i}" for i in reversed(range(days))]
        stage.publish((stage.path(name), os.path.join(out_dir, name)) for name in names)
    return info


def _write_json(path, info):
    with open(path, "w") as handle:
        json.dump(info, handle, indent=2)
        handle.write("\n")
