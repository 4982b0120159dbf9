"""DLRM's embedding tables with MLET: which tables, built how, called how.

``create_emb`` replaces ``DLRM_Net.create_emb`` when MLET trains (DLRM's QR
and MD tables with MLET inside: ``tricks.py``), and ``apply_emb`` its
``apply_emb``. The tables are the core's ``MLETEmbeddingBag``; plain ones
keep DLRM's own class and init, so a table left plain is the one stock DLRM
would build.
"""

from typing import Iterable, List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from torch import nn

from ..core import half
from ..core.bag import MLETEmbeddingBag
from ..core.budget import format_plan, plan_hidden_dims
from ..core.init import uniform_table_
from ..core.options import check_table_count, hidden_dim_for
from ..core.pair import TwoLayer, is_mlet
from ..engine import fused, packing
from ..engine.grouped import grouped_forward
from ..errors import MLETError
from ..data import frequency
from . import evaluation, space, tricks
from .session import fail, session


def make_table(n: int, d: int, k: int) -> nn.Module:
    """An ``n``-row table: MLET with hidden width ``k``, or plain with DLRM's own init when ``k`` is 0."""
    config = session.config
    if k:
        return MLETEmbeddingBag(n, d, k, mode="sum", sparse=True, proj_init=config.proj_init,
                                table_dtype=config.table_dtype)
    table = nn.EmbeddingBag(n, d, mode="sum", sparse=True, _weight=torch.empty(n, d))
    uniform_table_(table.weight)
    return table


def _folded_bytes(tables):
    """Bytes of ``tables`` once folded: each MLET table as n x d float32, every other parameter as it is."""
    inside = {id(p) for t in tables.modules() if is_mlet(t) for p in t.parameters()}
    return (sum(4 * t.num_embeddings * t.embedding_dim for t in tables.modules() if is_mlet(t))
            + sum(p.numel() * p.element_size() for p in tables.parameters() if id(p) not in inside))


def _composite(net, n):
    """Which of DLRM's compressed tables table ``n`` rows is under its flags: "qr", "md" or None (plain)."""
    if getattr(net, "qr_flag", False) and n > net.qr_threshold:
        return "qr"
    if getattr(net, "md_flag", False) and n > net.md_threshold:
        return "md"
    return None


def _composite_table(net, kind, n, d, width, k):
    """A QR or MD table as stock DLRM builds it, its tables MLET tables of hidden width ``k`` (0: stock's)."""
    config = session.config

    def make(rows: int, dim: int, hidden: int = k) -> MLETEmbeddingBag:
        return MLETEmbeddingBag(rows, dim, hidden, mode="sum", sparse=True, proj_init=config.proj_init,
                                table_dtype=config.table_dtype)

    if kind == "md":
        return tricks.md_table(net, n, d, width, tricks.md_hidden_dim(k, d, width) if k else 0, make)
    if not k:
        return tricks.stock_class(net, "QREmbeddingBag")(n, d, net.qr_collisions, operation=net.qr_operation,
                                                          mode="sum", sparse=True)
    return tricks.MLETQREmbeddingBag(tricks.stock_class(net, "QREmbeddingBag"), n, d, net.qr_collisions,
                                     net.qr_operation, make)


def create_emb(net: nn.Module, m: Union[int, List[int]], ln: np.ndarray,
               weighted_pooling: Optional[str] = None) -> Tuple[nn.ModuleList, List[Optional[torch.Tensor]]]:
    """``DLRM_Net.create_emb`` for MLET runs.

    Keeps DLRM's contract: in distributed mode only this rank's tables
    (``net.local_emb_indices``), and one pooling-weight vector per table.
    ``--mlet-fused-update`` is set on the tables built here, so it holds for
    this model only (``fused.use``), not for every model in the process.
    """
    config = session.config
    dims = config.per_table or (config.hidden_dim,)
    try:
        check_table_count(dims, ln.size)
        if config.memory_budget:
            dims = planned_dims([int(n) for n in ln], int(cast(int, m)))  # one width: --md-flag has no budget
    except MLETError as error:
        fail(str(error))
    emb_l, v_W_l = nn.ModuleList(), []
    local = getattr(net, "local_emb_indices", None)
    if local is not None and config.fused_update == "fbgemm":
        fail("--mlet-fused-update=fbgemm is single-process only; in DLRM's distributed mode use "
             "--mlet-fused-update")
    built = [i for i in range(ln.size) if local is None or i in local]
    if getattr(net, "md_flag", False):
        small = [(i, int(ln[i])) for i in built if int(ln[i]) <= cast(int, net.md_threshold)]
        if small:
            fail(f"--md-flag: table {small[0][0]} has {small[0][1]} rows, at or below --md-threshold="
                 f"{net.md_threshold}; stock DLRM cannot build such a table (it passes its list of widths to "
                 "nn.EmbeddingBag), so it could not load the folded model: lower --md-threshold below it")
    widths = [hidden_dim_for(i, int(ln[i]), dims, config.min_rows) for i in built]
    composite = [_composite(net, int(ln[i])) for i in built]  # DLRM's QR / MD tables
    plain_m = max(m) if isinstance(m, (list, tuple)) else int(m)
    # Each width's tables in one buffer, and their projections in another (engine/packing.py).
    packed = [k if not c else 0 for k, c in zip(widths, composite)]
    tables = {k: packing.Buffer(sum(int(ln[i]) for i, w in zip(built, packed) if w == k), k,
                                half.table_dtype(config.table_dtype)) for k in sorted(set(packed) - {0})}
    projs = {k: packing.Buffer(packed.count(k) * plain_m, k) for k in tables}
    for i, k, kind in zip(built, widths, composite):
        n = int(ln[i])
        if kind:
            table = _composite_table(net, kind, n, cast(List[int], m)[i] if kind == "md" else plain_m, plain_m, k)
        else:
            table = make_table(n, plain_m, k)
            if k:  # an MLET table
                tables[k].place(cast(TwoLayer, table).table.weight)
                projs[k].place(cast(TwoLayer, table).proj.weight)
        emb_l.append(table)
        v_W_l.append(None if weighted_pooling is None else torch.ones(n, dtype=torch.float32))
    if config.fused_update:
        fused.use(emb_l, config.fused_update, config.optimizer if config.fused_update == "torch" else "sgd")
    mlet = [cast(TwoLayer, t) for t in emb_l.modules() if is_mlet(t)]
    train_bytes = sum(p.numel() * p.element_size() for p in emb_l.parameters())
    folded_bytes = _folded_bytes(emb_l)
    shown = "-".join(map(str, sorted({t.hidden_dim for t in mlet}))) or "-"
    dtype = "" if config.table_dtype == "fp32" else f" ({config.table_dtype})"
    print(
        f"MLET: {len(mlet)} of {len(emb_l)} tables trained as n x {shown}{dtype} -> {m}; "
        f"embedding bytes {train_bytes / 2**20:.1f} MiB training, "
        f"{folded_bytes / 2**20:.1f} MiB once folded",
        flush=True,
    )
    if local is None:  # distributed ranks write shards of their own tables
        try:
            space.check(emb_l, config.save_model)
        except MLETError as error:
            fail(str(error))
    return emb_l, v_W_l


def planned_dims(rows: Sequence[int], d: int) -> Tuple[int, ...]:
    """``--mlet-memory-budget``: a K per table from ``core.budget``, printed before training.

    Every rank plans from all tables' sizes, so in distributed mode they agree.
    The ``rare`` rule counts rare rows in the training split when the loader
    can say (``evaluation.train_counts``), else it ranks tables by size.
    """
    config = session.config
    rare, note = None, ""
    if config.budget_rule == "rare":
        train_data, max_ind_range = session.training or (None, -1)
        counts = None if train_data is None else evaluation.train_counts(train_data, rows, max_ind_range)
        rare = None if counts is None else frequency.rare_rows(counts)
        note = " (tables ordered by rows: this data loader cannot count rare rows)" if rare is None else ""
    plan = plan_hidden_dims(rows, d, config.hidden_dim, config.memory_budget, table_dtype=config.table_dtype,
                            optimizer=config.optimizer, rule=config.budget_rule, min_rows=config.min_rows,
                            rare=rare)
    print(f"MLET: --mlet-memory-budget plan{note}:\n{format_plan(plan)}", flush=True)
    return plan.hidden_dims


def apply_emb(lS_o: Iterable[torch.Tensor], lS_i: Iterable[torch.Tensor], emb_l: Iterable[nn.Module],
              v_W_l: Iterable[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    """``DLRM_Net.apply_emb`` for MLET training: same outputs, MLET tables grouped.

    One autograd node for all MLET tables (batched projections, sparse
    gradients built directly) instead of two per table: see
    ``core.grouped.grouped_forward``. DLRM's pooling-weight lookup is kept as is.
    """
    weights = [None if w is None else w.gather(0, i) for w, i in zip(v_W_l, lS_i)]
    return grouped_forward(list(emb_l), list(lS_i), list(lS_o), weights)


def has_mlet_tables(model: nn.Module) -> bool:
    return any(is_mlet(m) for m in model.modules())
