"""The grouped engine: many MLET tables' pooling and projection as one autograd node.

DLRM calls 26 tables per step; run one by one, each costs two autograd nodes
and a sparse-gradient tensor. Tables with the same shapes, mode and device are
run together here (batched projections, sparse gradients built directly).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import nn

from ..core.bag import MLETEmbeddingBag
from . import packing, tbe
from .routes import Route, route_of


def _one_hot(indices, offsets):
    """Whether every bag of every table holds one index (DLRM's Criteo and Avazu inputs).

    One comparison for the whole group rather than one per table.
    """
    bags = offsets[0].numel()
    if any(i.numel() != bags or o.numel() != bags for i, o in zip(indices, offsets)):
        return False
    expected = torch.arange(bags, device=offsets[0].device, dtype=offsets[0].dtype)
    return torch.equal(torch.stack(offsets), expected.expand(len(offsets), bags))


class _Grouped(torch.autograd.Function):
    """Several MLET tables' pooling and projection as one autograd node.

    Per table the math is the module's: ``pool(A[idx]) @ B.T``. What changes is
    the bookkeeping: the projections run as one batched matmul forward and two
    backward; the rows are gathered with one op when the tables share one
    buffer (``packing.py``, as DLRM's tables are built), else one per table;
    and each table's gradient rows come straight from the projected-back
    output gradient (with no gather at all for one-hot bags, DLRM's Criteo
    case), then go where the tables' ``Route`` sends them (sparse gradients,
    or the optimizer's next step), instead of 26 Linear nodes and 26
    EmbeddingBag backward nodes.
    """

    @staticmethod
    def forward(ctx: Any, mode: str, route: Route, indices: List[torch.Tensor], offsets: List[torch.Tensor],
                weights: List[Optional[torch.Tensor]], *params: torch.Tensor) -> torch.Tensor:
        count = len(indices)
        tables, projs = params[:count], params[count:]
        one_hot = _one_hot(indices, offsets)
        first = tables[0]
        halved = route.halved  # pooled in float32 from rows gathered as float32
        with torch.no_grad():
            pooled = torch.empty(count, offsets[0].numel(), first.shape[1], device=first.device,
                                 dtype=torch.float32 if halved else first.dtype)
            packed = packing.flat_indices(tables, indices)
            if packed is None:
                for t, (i, a, o, w) in enumerate(zip(indices, tables, offsets, weights)):
                    _pool_into(pooled[t], a, i, o, w, mode, one_hot, halved)
            else:  # one op over the tables' shared buffer
                buffer, flat = packed
                joined = None
                if not (one_hot and weights[0] is None):  # each table's offsets, into flat
                    counts = torch.tensor([i.numel() for i in indices], device=flat.device)
                    joined = (torch.stack(offsets) + (torch.cumsum(counts, 0) - counts)[:, None]).flatten()
                # (the cast: a group's weights are all None or all tensors, grouped_forward groups them so)
                _pool_into(pooled.flatten(0, 1), buffer, flat, joined,
                           None if weights[0] is None else torch.cat(cast(List[torch.Tensor], weights)),
                           mode, one_hot, halved)
            proj = packing.stacked(projs)
            out = packing.project(pooled, proj)
        ctx.mode, ctx.indices, ctx.offsets, ctx.weights = mode, indices, offsets, weights
        ctx.one_hot, ctx.route, ctx.tables, ctx.projs, ctx.packed = one_hot, route, tables, projs, packed
        ctx.projs_packed = proj.data_ptr() == projs[0].data_ptr()  # a view of them, not a copy
        ctx.save_for_backward(pooled, proj)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        pooled, proj = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_proj = packing.projection_grad(grad_out, pooled)
        grad_pooled = torch.bmm(grad_out, proj)
        if ctx.one_hot and ctx.weights[0] is None:
            rows: packing.PerTable = grad_pooled  # a one-row bag's gradient is its row's
        else:
            rows = [grad_pooled[t] * w.unsqueeze(1) if ctx.one_hot else
                    _index_rows(grad_pooled[t], i, o, w, ctx.mode)
                    for t, (i, o, w) in enumerate(zip(ctx.indices, ctx.offsets, ctx.weights))]
        grads = ctx.route.backward(ctx.tables, ctx.indices, rows, ctx.packed, ctx.projs, grad_proj,
                                   proj if ctx.projs_packed else None)
        return (None, None, None, None, None, *grads)


def _pool_into(out, weight, indices, offsets, weights, mode, one_hot, halved):
    """Pool the bags of ``weight``'s rows into ``out``; a half table's rows are gathered as float32."""
    if one_hot and weights is None:  # a one-row bag is its row
        if halved:
            out.copy_(weight.index_select(0, indices))
        else:
            torch.index_select(weight, 0, indices, out=out)
    elif halved:
        out.copy_(nn.functional.embedding_bag(torch.arange(indices.numel(), device=indices.device),
                                              weight.index_select(0, indices).float(), offsets, mode=mode,
                                              per_sample_weights=weights))
    else:
        out.copy_(nn.functional.embedding_bag(indices, weight, offsets, mode=mode, per_sample_weights=weights))


def _index_rows(rows, indices, offsets, weights, mode):
    """Each index's gradient row from its bag's (``rows``: one per bag)."""
    lengths = torch.diff(offsets, append=offsets.new_tensor([indices.numel()]))
    bag_of = torch.repeat_interleave(torch.arange(rows.shape[0], device=offsets.device), lengths)
    if mode == "mean":
        rows = rows / lengths.clamp_min(1).unsqueeze(1).to(rows.dtype)
    rows = rows.index_select(0, bag_of)
    return rows if weights is None else rows * weights.unsqueeze(1)


def _weights(bag):
    """An ``MLETEmbeddingBag``'s table and projection weights, read from the modules' own dicts.

    ``grouped_forward`` reads them for every table at every step; through
    ``nn.Module.__getattr__`` (and ``TwoLayer``'s properties) that lookup is a
    measurable share of a DLRM step with 26 tables.
    """
    return bag._modules["table"]._parameters["weight"], bag._modules["proj"]._parameters["weight"]


def _batch_key(t):
    """What tables must share to run in one ``_Grouped`` node, or None for a table called alone.

    Alone: plain tables, dense gradients (an fp32 table built with
    ``sparse=False``), padding rows and ``include_last_offset``.
    """
    if not isinstance(t, MLETEmbeddingBag):
        return None
    table = t._modules["table"]
    weight, proj = _weights(t)
    route = route_of(t)
    if not (table.sparse or route.halved) or table.padding_idx is not None or table.include_last_offset:
        return None
    return (table.mode, route, weight.shape[1], proj.shape[0], weight.device, weight.dtype)


def grouped_forward(tables: Sequence[nn.Module], indices: Sequence[torch.Tensor],
                    offsets: Sequence[Optional[torch.Tensor]],
                    weights: Sequence[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    """Outputs of a list of tables (DLRM's ``emb_l``) for one batch: a list of ``(batch, d)``.

    MLET tables with the same widths, mode, device and update share one
    ``_Grouped`` node per such group; the others (plain tables, dense gradients,
    2-D inputs, trainable per-sample weights, padding rows, ``include_last_offset``,
    a group of one) are called one by one.
    Half-precision tables (``--mlet-table-dtype``) always take ``half.py``'s
    update. Grouped tables that ``fused.use`` set (``--mlet-fused-update``, DLRM's
    default with SGD) and their projections get no gradient: their SGD update
    is applied by the optimizer's next step instead; for those set
    to ``"fbgemm"`` fbgemm's TBE pools them and applies that step. The setting
    is each table's, so models with and without it live side by side.
    """
    outputs: List[Optional[torch.Tensor]] = [None] * len(tables)
    groups: Dict[Tuple[Any, ...], List[int]] = {}
    if torch.is_grad_enabled():
        for j, (t, i, o, w) in enumerate(zip(tables, indices, offsets, weights)):
            key = _batch_key(t)
            if key is not None and i.dim() == 1 and o is not None and not (w is not None and w.requires_grad):
                groups.setdefault(key + (o.numel(), w is None), []).append(j)
    for (mode, route, *_), members in groups.items():
        if len(members) < 2:
            continue
        members_indices, members_offsets = [indices[j] for j in members], [offsets[j] for j in members]
        members_weights = [weights[j] for j in members]
        tables_weights, projs = zip(*(_weights(tables[j]) for j in members))
        # fbgemm would accept weights with mean pooling; _Grouped raises nn.EmbeddingBag's error for it
        if route.tables == "fbgemm" and not (mode == "mean" and members_weights[0] is not None):
            group = tbe.group_for([cast(MLETEmbeddingBag, tables[j]) for j in members])  # all _batch_key groups
            grouped = tbe.Grouped.apply(group, members_indices, members_offsets, members_weights, *projs)
        else:
            grouped = _Grouped.apply(mode, route, members_indices, members_offsets, members_weights,
                                     *tables_weights, *projs)
        for j, out in zip(members, grouped.unbind(0)):
            outputs[j] = out
    for j, out in enumerate(outputs):
        if out is None:
            outputs[j] = tables[j](indices[j], offsets[j], per_sample_weights=weights[j])
    return cast(List[torch.Tensor], outputs)  # each one set by now
