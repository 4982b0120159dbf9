"""``dlrm-mlet plan``: the k per table that fits a training-memory budget, without training.

Table sizes come from where a trainer takes them: DLRM's
``--arch-embedding-size``, a processed data file (DLRM's Criteo-Kaggle
``.npz``, a Terabyte ``_fea_count.npz``, our Avazu cache folder) or a
TorchRec table list (JSON), capped by ``--max-ind-range`` as DLRM caps them.
The ``rare`` rule's score, rows seen 1..10 times in training, is counted
when the data holds ``X_cat``: on the embedding row the model sees (after
``--max-ind-range``), over the training split only, the count
``--mlet-metrics-json``'s frequency buckets use. Without ``X_cat`` the rule
orders tables by size. The data is streamed in blocks (``dlrm/processed.py``),
and only read for the ``rare`` rule.
"""

import argparse
import json
import os
import types
from typing import List, Optional, Tuple

from ..core.budget import format_plan, parse_size, plan_tables, rule_name
from ..data.frequency import cap_rows, count_rows, rare_rows
from ..data.processed import holds_values, table_sizes, training_split
from ..errors import MLETError, integer
from ..files import StrPath
from ..progress import progress_bar

Tables = types.SimpleNamespace  # configs as plan_tables takes them: name, num_embeddings, embedding_dim


def parse_embedding_sizes(text: str, flag: str = "--arch-embedding-size") -> List[int]:
    """DLRM's ``N1-N2-...`` as a list of table sizes."""
    try:
        rows = [int(v) for v in str(text).strip().split("-")]
    except ValueError:
        rows = [0]
    if min(rows) < 1:
        raise MLETError(f"{flag}: expected dash-separated table sizes >= 1 such as 1460-583-10131227, got {text!r}")
    return rows


def read_tables_json(path: StrPath) -> List[Tables]:
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


def read_processed(path: str, max_ind_range: int = -1, rare: bool = False,
                   quiet: bool = False) -> Tuple[List[int], Optional[List[int]], str]:
    """``(table sizes, rare-row scores or None, a note on the scores)`` of DLRM's processed data.

    Sizes are as stored, before ``--max-ind-range``'s cap (the caller's).
    The scores are counted only when asked (``rare``) and the data is there.
    """
    sizes = table_sizes(path)
    if not rare:
        return sizes, None, ""
    if not holds_values(path):
        return sizes, None, f"{os.path.basename(path)} holds no X_cat: tables ordered by rows"
    split = training_split(path)
    with progress_bar(split.rows, "count rare rows", quiet) as bar:
        counts = count_rows(split.blocks(), cap_rows(split.sizes, max_ind_range), max_ind_range, bar.update)
    return split.sizes, rare_rows(counts), f"rare rows counted over {split.source}"


def _int_option(text, flag):
    try:
        return int(str(text).strip())
    except ValueError:
        raise MLETError(f"{flag}: expected an integer, got {text!r}") from None


def plan_command(args: argparse.Namespace) -> str:
    """The text ``dlrm-mlet plan`` prints, from its argparse namespace."""
    budget = parse_size(args.budget, "--budget")
    k_max = integer(args.mlet_hidden_dim, "--mlet-hidden-dim", 1, text=True)
    min_rows = integer(args.mlet_min_rows, "--mlet-min-rows", 0, text=True)
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
        d = integer(args.arch_sparse_feature_size, "--arch-sparse-feature-size", 1, text=True)
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
