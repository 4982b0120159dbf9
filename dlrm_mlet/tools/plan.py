"""``dlrm-mlet plan``: the k per table that fits a training-memory budget, without training.

Table sizes come from where a trainer takes them: DLRM's
``--arch-embedding-size``, a processed data file (DLRM's Criteo-Kaggle
``.npz``, a Terabyte ``_fea_count.npz``, our Avazu cache folder) or a
TorchRec table list (JSON), capped by ``--max-ind-range`` as DLRM caps them.
The ``rare`` rule's score, rows seen 1..10 times in training, is counted
when the data holds ``X_cat``: on the embedding row the model sees (after
``--max-ind-range``), over the training split only, the count
``--mlet-metrics-json``'s frequency buckets use. Without ``X_cat`` the rule
orders tables by size. ``X_cat`` is streamed in blocks (45M x 26 values for
Criteo-Kaggle), and only read for the ``rare`` rule.
"""

import glob
import json
import os
import types
import zipfile

import numpy as np

from ..core.budget import format_plan, parse_size, plan_tables, rule_name
from ..core.options import parse_int
from ..dlrm.data import KAGGLE_DAYS, AvazuDataset, day_sizes
from ..dlrm.evaluation import rare_rows as rare_rows_of
from ..errors import MLETError
from ..progress import progress_bar

_CHUNK = 1 << 20  # rows per block of X_cat

Tables = types.SimpleNamespace  # configs as plan_tables takes them: name, num_embeddings, embedding_dim


def parse_embedding_sizes(text, flag="--arch-embedding-size"):
    """DLRM's ``N1-N2-...`` as a list of table sizes."""
    try:
        rows = [int(v) for v in str(text).strip().split("-")]
    except ValueError:
        rows = [0]
    if min(rows) < 1:
        raise MLETError(f"{flag}: expected dash-separated table sizes >= 1 such as 1460-583-10131227, got {text!r}")
    return rows


def read_tables_json(path):
    """A TorchRec table list ``[{"name", "num_embeddings", "embedding_dim"}, ...]`` as configs."""
    try:
        with open(path) as handle:
            items = json.load(handle)
    except OSError as error:
        raise MLETError(f"{path}: {error.strerror}") from None
    except ValueError as error:
        raise MLETError(f"{path}: not JSON ({error})") from None
    keys = ("name", "num_embeddings", "embedding_dim")
    if not isinstance(items, list) or not items:
        raise MLETError(f"{path}: expected a non-empty list of tables {{{', '.join(keys)}}}")
    configs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(key not in item for key in keys):
            raise MLETError(f"{path}: table {i} lacks one of {', '.join(keys)}")
        for key in keys[1:]:
            if isinstance(item[key], bool) or not isinstance(item[key], int) or item[key] < 1:
                raise MLETError(f"{path}: table {i} {key} must be an integer >= 1, got {item[key]!r}")
        configs.append(Tables(name=str(item["name"]), num_embeddings=item["num_embeddings"],
                              embedding_dim=item["embedding_dim"]))
    return configs


def read_processed(path, max_ind_range=-1, rare=False, quiet=False):
    """``(table sizes, rare-row scores or None, a note on the scores)`` of a DLRM processed file or Avazu cache.

    Sizes are as stored, before ``--max-ind-range``'s cap (the caller's).
    The scores are counted only when asked (``rare``) and the data is there.
    """
    if os.path.isdir(path):
        return _read_avazu(path, max_ind_range, rare, quiet)
    if not os.path.isfile(path):
        raise MLETError(f"{path}: no such file or folder")
    try:
        with np.load(path) as data:
            if "counts" not in getattr(data, "files", ()):
                raise MLETError(f"{path}: no 'counts' array (expected a DLRM processed .npz, a _fea_count.npz "
                                "or an Avazu cache folder)")
            counts = [int(n) for n in data["counts"]]
            has_x_cat = "X_cat" in data.files
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise MLETError(f"{path}: not a DLRM processed .npz ({error})") from None
    if not rare:
        return counts, None, ""
    if not has_x_cat:
        return counts, None, f"{os.path.basename(path)} holds no X_cat: tables ordered by rows"
    train, source = _kaggle_train_rows(path, _npz_shape(path, "X_cat")[0])
    scores = rare_rows(_npz_blocks(path, "X_cat", train), counts, max_ind_range, train, quiet)
    return counts, scores, f"rare rows counted over the {train} training rows ({source})"


def _read_avazu(path, max_ind_range, rare, quiet):
    try:
        dataset = AvazuDataset(path, "train")
    except (OSError, KeyError, ValueError) as error:
        raise MLETError(f"{path}: not an Avazu cache folder ({error})") from None
    counts = [int(n) for n in dataset.counts]
    if not rare:
        return counts, None, ""
    train = len(dataset.rows)
    blocks = (dataset.x_cat[np.sort(dataset.rows[a:a + _CHUNK])] for a in range(0, train, _CHUNK))
    return counts, rare_rows(blocks, counts, max_ind_range, train, quiet), \
        f"rare rows counted over the {train} training rows (train_idx.npy)"


def _kaggle_train_rows(path, total):
    """How many leading rows DLRM trains on: all days but the last.

    The days' sizes are in DLRM's ``<stem>_day_count.npz``, named after the
    raw file, not this one: a sibling whose days add up to ``total`` is taken;
    without one, DLRM's split of the rows into 7 near-equal days.
    """
    found = set()
    for other in glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), "*_day_count.npz")):
        try:
            with np.load(other) as data:
                days = [int(v) for v in data["total_per_file"]]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
        if sum(days) == total:
            found.add((sum(days[:-1]), os.path.basename(other)))
    if len({rows for rows, _ in found}) == 1:
        rows, name = min(found)
        return rows, f"days from {name}"
    return sum(day_sizes(total)[:-1]), f"{KAGGLE_DAYS} near-equal days, as DLRM splits them"


def _npz_member(path, name):
    """``(archive, stream)`` of an .npz member, both for the caller to close."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise MLETError(f"{path}: cannot read {name} ({error})") from None
    try:
        return archive, archive.open(name + ".npy")
    except KeyError:
        archive.close()
        raise MLETError(f"{path}: no {name} array") from None


def _npy_header(handle, path, name):
    """``(shape, dtype)`` of a 2-D C-order .npy stream, left at its first value."""
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(handle)
    if len(shape) != 2 or (fortran and shape[1] > 1):
        raise MLETError(f"{path}: {name} must be a C-order rows x tables array, got shape {shape}")
    return shape, dtype


def _npz_shape(path, name):
    archive, handle = _npz_member(path, name)
    with archive, handle:
        return _npy_header(handle, path, name)[0]


def _npz_blocks(path, name, rows):
    """The first ``rows`` rows of a 2-D .npz member, ``_CHUNK`` at a time: never the whole array."""
    archive, handle = _npz_member(path, name)
    with archive, handle:
        shape, dtype = _npy_header(handle, path, name)
        width = shape[1] * dtype.itemsize
        for start in range(0, rows, _CHUNK):
            count = min(_CHUNK, rows - start)
            data = handle.read(count * width)
            if len(data) != count * width:
                raise MLETError(f"{path}: {name} ends early")
            yield np.frombuffer(data, dtype=dtype).reshape(count, shape[1])


def rare_rows(blocks, counts, max_ind_range=-1, total=None, quiet=True):
    """Per table, how many embedding rows occur 1..10 times in ``blocks`` (rows x tables values)."""
    sizes = cap_rows(counts, max_ind_range)
    seen = [np.zeros(n, dtype=np.int64) for n in sizes]
    with progress_bar(total, "count rare rows", quiet) as bar:
        for block in blocks:
            if block.shape[1] != len(sizes):
                raise MLETError(f"X_cat has {block.shape[1]} columns for {len(sizes)} tables")
            for j, table in enumerate(seen):
                column = block[:, j].astype(np.int64)
                if max_ind_range > 0:
                    column %= max_ind_range
                if len(column) and column.min() < 0:
                    raise MLETError(f"X_cat column {j} holds negative indices")
                table += np.bincount(column, minlength=len(table))[: len(table)]
            bar.update(len(block))
    return rare_rows_of(seen)


def cap_rows(rows, max_ind_range):
    """Table sizes as DLRM sizes its tables: ``min(count, R)`` when ``--max-ind-range R > 0``."""
    return [min(int(n), max_ind_range) if max_ind_range > 0 else int(n) for n in rows]


def _int_option(text, flag):
    try:
        return int(str(text).strip())
    except ValueError:
        raise MLETError(f"{flag}: expected an integer, got {text!r}") from None


def plan_command(args):
    """The text ``dlrm-mlet plan`` prints, from its argparse namespace."""
    budget = parse_size(args.budget, "--budget")
    k_max = parse_int(args.mlet_hidden_dim, "--mlet-hidden-dim", 1)
    min_rows = parse_int(args.mlet_min_rows, "--mlet-min-rows", 0)
    max_ind_range = _int_option(args.max_ind_range, "--max-ind-range")
    rule = rule_name(args.rule)
    if args.tables:
        if args.arch_sparse_feature_size is not None:
            raise MLETError("--arch-sparse-feature-size: the widths come from --tables; give one or the other")
        configs = read_tables_json(args.tables)
        names, rare, note = [c.name for c in configs], None, ""
    else:
        if args.arch_sparse_feature_size is None:
            raise MLETError("--arch-sparse-feature-size D is needed: the model's embedding width")
        d = parse_int(args.arch_sparse_feature_size, "--arch-sparse-feature-size", 1)
        if args.arch_embedding_size is not None:
            rows, rare, note = parse_embedding_sizes(args.arch_embedding_size), None, ""
        else:
            rows, rare, note = read_processed(args.processed_data_file, max_ind_range, rule == "rare", args.quiet)
        configs = [Tables(name=str(i), num_embeddings=n, embedding_dim=d) for i, n in enumerate(rows)]
        names = None
    if rule == "rare" and not note:
        note = "no data to count rare rows in: tables ordered by rows"
    for config, n in zip(configs, cap_rows([c.num_embeddings for c in configs], max_ind_range)):
        config.num_embeddings = n
    plan, _ = plan_tables(configs, budget, k_max, table_dtype=args.mlet_table_dtype, optimizer=args.optimizer,
                          rule=rule, min_rows=min_rows, rare=rare, what="--budget")
    text = format_plan(plan, names)
    return f"{text}\n{note}" if note else text
