"""The grouped engine: many MLET tables' pooling and projection as one autograd node.

DLRM calls 26 tables per step; run one by one, each costs two autograd nodes
and a sparse-gradient tensor. Tables with the same shapes, mode and device are
run together here (batched projections, sparse gradients built directly).
"""

import torch
from torch import nn

from . import fused, half, tbe
from .bag import MLETEmbeddingBag


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
    backward, and each table's sparse gradient is built straight from the
    projected-back output gradient (with no gather at all for one-hot bags,
    DLRM's Criteo case), instead of 26 Linear nodes and 26 EmbeddingBag
    backward nodes.
    """

    @staticmethod
    def forward(ctx, mode, fuse, indices, offsets, weights, *params):
        count = len(indices)
        tables, projs = params[:count], params[count:]
        one_hot = _one_hot(indices, offsets)
        with torch.no_grad():
            first = tables[0]
            halved = half.is_half(first)  # pooled in float32 from rows gathered as float32
            pooled = torch.empty(count, offsets[0].numel(), first.shape[1], device=first.device,
                                 dtype=torch.float32 if halved else first.dtype)
            for t, (i, a, o, w) in enumerate(zip(indices, tables, offsets, weights)):
                if w is None and one_hot:
                    if halved:
                        pooled[t] = a.index_select(0, i)
                    else:
                        torch.index_select(a, 0, i, out=pooled[t])  # a one-row bag is its row
                elif halved:
                    pooled[t] = nn.functional.embedding_bag(torch.arange(i.numel(), device=i.device),
                                                            a.index_select(0, i).float(), o, mode=mode,
                                                            per_sample_weights=w)
                else:
                    pooled[t] = nn.functional.embedding_bag(i, a, o, mode=mode, per_sample_weights=w)
            proj = torch.stack(projs)
            out = torch.bmm(pooled, proj.transpose(1, 2))
        ctx.mode, ctx.indices, ctx.offsets, ctx.weights = mode, indices, offsets, weights
        ctx.one_hot = one_hot
        ctx.shapes = [a.shape for a in tables]
        ctx.tables = tables if fuse or halved else None
        ctx.save_for_backward(pooled, proj)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pooled, proj = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_proj = torch.bmm(grad_out.transpose(1, 2), pooled).unbind(0)
        grad_pooled = torch.bmm(grad_out, proj)
        grad_tables = []
        for t, (idx, off, w, shape) in enumerate(zip(ctx.indices, ctx.offsets, ctx.weights, ctx.shapes)):
            rows = grad_pooled[t]
            bags = rows.shape[0]
            if not ctx.one_hot:
                lengths = torch.diff(off, append=off.new_tensor([idx.numel()]))
                bag_of = torch.repeat_interleave(torch.arange(bags, device=off.device), lengths)
                if ctx.mode == "mean":
                    rows = rows / lengths.clamp_min(1).unsqueeze(1).to(rows.dtype)
                rows = rows.index_select(0, bag_of)
            if w is not None:
                rows = rows * w.unsqueeze(1)
            if ctx.tables is not None:  # --mlet-fused-update or a half table: the optimizer's step applies the rows
                fused.add(ctx.tables[t], idx, rows)
                grad_tables.append(None)
            else:
                grad_tables.append(torch.sparse_coo_tensor(idx.unsqueeze(0), rows, shape, check_invariants=False))
        return (None, None, None, None, None, *grad_tables, *grad_proj)


def grouped_forward(tables, indices, offsets, weights):
    """Outputs of a list of tables (DLRM's ``emb_l``) for one batch: a list of ``(batch, d)``.

    MLET tables with the same widths, mode, device and update share one
    ``_Grouped`` node per such group; the others (plain tables, dense gradients,
    2-D inputs, trainable per-sample weights, padding rows, ``include_last_offset``,
    a group of one) are called one by one.
    Half-precision tables (``--mlet-table-dtype``) always take ``half.py``'s
    update. Grouped tables that ``fused.use`` set (``--mlet-fused-update``) get no
    gradient: their rows go to the optimizer's next step instead; for those set
    to ``"fbgemm"`` fbgemm's TBE pools them and applies that step. The setting
    is each table's, so models with and without it live side by side.
    """
    def groupable(t, i, o, w):
        return (isinstance(t, MLETEmbeddingBag) and (t.sparse or half.is_half(t.table.weight))
                and i.dim() == 1 and o is not None
                and t.table.padding_idx is None and not t.table.include_last_offset
                and not (w is not None and w.requires_grad))

    outputs = [None] * len(tables)
    groups = {}
    if torch.is_grad_enabled():
        for j, args in enumerate(zip(tables, indices, offsets, weights)):
            if groupable(*args):
                t = tables[j]
                key = (t.hidden_dim, t.embedding_dim, t.mode, t.table.weight.device,
                       t.table.weight.dtype, offsets[j].numel(), weights[j] is None, fused.backend_of(t))
                groups.setdefault(key, []).append(j)
    for (_, _, mode, *_, backend), members in groups.items():
        if len(members) < 2:
            continue
        members_indices, members_offsets = [indices[j] for j in members], [offsets[j] for j in members]
        members_weights = [weights[j] for j in members]
        projs = [tables[j].proj.weight for j in members]
        # fbgemm would accept weights with mean pooling; _Grouped raises nn.EmbeddingBag's error for it
        if backend == "fbgemm" and not (mode == "mean" and members_weights[0] is not None):
            group = tbe.group_for([tables[j] for j in members])
            grouped = tbe.Grouped.apply(group, members_indices, members_offsets, members_weights, *projs)
        else:
            grouped = _Grouped.apply(mode, backend is not None, members_indices, members_offsets, members_weights,
                                     *[tables[j].table.weight for j in members], *projs)
        for j, out in zip(members, grouped.unbind(0)):
            outputs[j] = out
    for j, out in enumerate(outputs):
        if out is None:
            outputs[j] = tables[j](indices[j], offsets[j], per_sample_weights=weights[j])
    return outputs
