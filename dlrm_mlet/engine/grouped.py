"""The grouped engine: many MLET tables' pooling and projection as one autograd node.

DLRM calls 26 tables per step; run one by one, each costs two autograd nodes
and a sparse-gradient tensor. Tables with the same shapes, mode and device are
run together here (batched projections, sparse gradients built directly).
"""

import torch
from torch import nn

from ..core import half
from ..core.bag import MLETEmbeddingBag
from . import adaptive, fused, half_update, packing, tbe


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
    case), either as sparse gradients or, with ``fused.use``, handed to the
    optimizer's next step with the projections' gradients (``fused.add_group``),
    instead of 26 Linear nodes and 26 EmbeddingBag backward nodes.
    """

    @staticmethod
    def forward(ctx, mode, fuse, indices, offsets, weights, *params):
        rule = fuse if isinstance(fuse, str) else "sgd"  # fuse: False, or the rule applied at the step
        count = len(indices)
        tables, projs = params[:count], params[count:]
        one_hot = _one_hot(indices, offsets)
        first = tables[0]
        halved = half.is_half(first)  # pooled in float32 from rows gathered as float32
        with torch.no_grad():
            pooled = torch.empty(count, offsets[0].numel(), first.shape[1], device=first.device,
                                 dtype=torch.float32 if halved else first.dtype)
            packed = packing.flat_indices(tables, indices)
            if packed is None:
                for t, (i, a, o, w) in enumerate(zip(indices, tables, offsets, weights)):
                    _pool_into(pooled[t], a, i, o, w, mode, one_hot)
            else:  # one op over the tables' shared buffer
                buffer, flat = packed
                joined = None
                if not (one_hot and weights[0] is None):  # each table's offsets, into flat
                    counts = torch.tensor([i.numel() for i in indices], device=flat.device)
                    joined = (torch.stack(offsets) + (torch.cumsum(counts, 0) - counts)[:, None]).flatten()
                _pool_into(pooled.flatten(0, 1), buffer, flat, joined,
                           None if weights[0] is None else torch.cat(weights), mode, one_hot)
            proj = packing.stacked(projs)
            out = packing.project(pooled, proj)
        ctx.mode, ctx.indices, ctx.offsets, ctx.weights = mode, indices, offsets, weights
        ctx.one_hot, ctx.halved = one_hot, halved
        ctx.shapes = [a.shape for a in tables]
        ctx.tables = tables if fuse or halved else None
        ctx.projs_packed = proj.data_ptr() == projs[0].data_ptr()  # a view of them, not a copy
        # the projections' update at the step: SGD's always, Adagrad's over packed ones
        ctx.projs = projs if fuse and (rule == "sgd" or rule == "adagrad" and ctx.projs_packed) else None
        ctx.rule = rule
        ctx.packed = packed
        ctx.save_for_backward(pooled, proj)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pooled, proj = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_proj = packing.projection_grad(grad_out, pooled)
        grad_pooled = torch.bmm(grad_out, proj)
        if ctx.one_hot and ctx.weights[0] is None:
            rows = grad_pooled  # a one-row bag's gradient is its row's
        else:
            rows = [grad_pooled[t] * w.unsqueeze(1) if ctx.one_hot else
                    _index_rows(grad_pooled[t], i, o, w, ctx.mode)
                    for t, (i, o, w) in enumerate(zip(ctx.indices, ctx.offsets, ctx.weights))]
        count = len(ctx.indices)
        if ctx.tables is None:  # sparse gradients, for the optimizer to apply
            grad_tables = [torch.sparse_coo_tensor(i.unsqueeze(0), rows[t], shape, check_invariants=False)
                           for t, (i, shape) in enumerate(zip(ctx.indices, ctx.shapes))]
            return (None, None, None, None, None, *grad_tables, *grad_proj.unbind(0))
        # The optimizer's next step applies the rows: half tables by their own rule, fused ones as SGD.
        if ctx.halved:
            half_update.add_group(ctx.tables, ctx.indices, rows, ctx.packed)
        elif ctx.rule != "sgd":
            adaptive.add_group(ctx.tables, ctx.indices, rows, ctx.rule, packed=ctx.packed)
        if ctx.projs is None:
            return (None, None, None, None, None, *([None] * count), *grad_proj.unbind(0))
        if ctx.rule == "adagrad":  # the tables' rows are deferred above; the projections at once too
            adaptive.add_projections(ctx.projs, grad_proj, proj)
            return (None,) * (5 + 2 * count)
        fused.add_group(() if ctx.halved else ctx.tables, ctx.indices, rows, ctx.projs, grad_proj,
                        packed=ctx.packed, stacked=proj if ctx.projs_packed else None)
        return (None,) * (5 + 2 * count)


def _pool_into(out, weight, indices, offsets, weights, mode, one_hot):
    """Pool the bags of ``weight``'s rows into ``out``; a half table's rows are gathered as float32."""
    halved = half.is_half(weight)
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
    if not (table.sparse or half.is_half(weight)) or table.padding_idx is not None or table.include_last_offset:
        return None
    return (table.mode, fused.backend_of(t), fused.rule_of(t), weight.shape[1], proj.shape[0], weight.device,
            weight.dtype)


def grouped_forward(tables, indices, offsets, weights):
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
    outputs = [None] * len(tables)
    groups = {}
    if torch.is_grad_enabled():
        for j, (t, i, o, w) in enumerate(zip(tables, indices, offsets, weights)):
            key = _batch_key(t)
            if key is not None and i.dim() == 1 and o is not None and not (w is not None and w.requires_grad):
                groups.setdefault(key + (o.numel(), w is None), []).append(j)
    for (mode, backend, rule, *_), members in groups.items():
        if len(members) < 2:
            continue
        members_indices, members_offsets = [indices[j] for j in members], [offsets[j] for j in members]
        members_weights = [weights[j] for j in members]
        tables_weights, projs = zip(*(_weights(tables[j]) for j in members))
        # fbgemm would accept weights with mean pooling; _Grouped raises nn.EmbeddingBag's error for it
        if backend == "fbgemm" and not (mode == "mean" and members_weights[0] is not None):
            group = tbe.group_for([tables[j] for j in members])
            grouped = tbe.Grouped.apply(group, members_indices, members_offsets, members_weights, *projs)
        else:
            grouped = _Grouped.apply(mode, rule if backend is not None else False, members_indices, members_offsets,
                                     members_weights, *tables_weights, *projs)
        for j, out in zip(members, grouped.unbind(0)):
            outputs[j] = out
    for j, out in enumerate(outputs):
        if out is None:
            outputs[j] = tables[j](indices[j], offsets[j], per_sample_weights=weights[j])
    return outputs
