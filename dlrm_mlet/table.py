"""The MLET table: an ``n x k`` embedding bag followed by a ``k -> d`` projection.

The training form and its folded inference form live in one class (as RepVGG
keeps a block and its equivalent kernel together), so the two can never drift.
"""

import math

import numpy as np
import torch
from torch import nn

from . import fused, tbe
from .errors import MLETError
from .folding import fold_weight

FOLDABLE_MODES = ("sum", "mean")
PROJ_INITS = "normal, normal-<std>, xavier, orthogonal"

# Rows drawn per numpy call when initialising a table: bounds the float64
# temporary numpy makes (16 MiB) whatever the table size.
_INIT_CHUNK_ELEMS = 2**21


def uniform_table_(weight):
    """Fill ``weight`` (n x w) with DLRM's ``U(-sqrt(1/n), sqrt(1/n))``.

    Drawn from numpy's global RNG, row block by row block: numpy's legacy
    generator yields the same stream whether asked for one ``(n, w)`` array or
    for consecutive row blocks, so a table of width ``w`` gets exactly the
    values stock DLRM would give it for the same ``--numpy-rand-seed``, without
    the ``n x w`` float64 temporary DLRM makes.
    """
    n, w = weight.shape
    bound = np.sqrt(1 / n)
    rows = max(1, _INIT_CHUNK_ELEMS // max(w, 1))
    with torch.no_grad():
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            block = np.random.uniform(low=-bound, high=bound, size=(stop - start, w))
            weight[start:stop].copy_(torch.from_numpy(block.astype(np.float32)))
    return weight


def parse_proj_init(spec):
    """Check a projection-init name early, so a typo fails before any work."""
    if spec in ("normal", "xavier", "orthogonal"):
        return spec
    if spec.startswith("normal-"):
        try:
            std = float(spec[len("normal-"):])
        except ValueError:
            std = -1.0
        if math.isfinite(std) and std > 0:
            return spec
    raise MLETError(f"unknown projection init {spec!r}; expected one of {PROJ_INITS}")


def init_projection_(weight, spec):
    """Initialise the ``d x k`` projection from numpy's global RNG.

    ``normal`` is N(0, 0.25^2), the MLET authors' default; numpy rather than
    torch so that ``--numpy-rand-seed`` alone reproduces a DLRM run.
    """
    d, k = weight.shape
    spec = parse_proj_init(spec)
    if spec == "orthogonal":
        q, r = np.linalg.qr(np.random.normal(size=(max(d, k), min(d, k))))
        q = q * np.sign(np.diag(r))  # unique, uniformly distributed Q
        values = q.T if d <= k else q
    else:
        if spec == "xavier":
            std = math.sqrt(2.0 / (d + k))
        elif spec == "normal":
            std = 0.25
        else:
            std = float(spec[len("normal-"):])
        values = np.random.normal(0.0, std, size=(d, k))
    with torch.no_grad():
        weight.copy_(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))
    return weight


class MLETEmbeddingBag(nn.Module):
    """Drop-in for ``nn.EmbeddingBag`` as DLRM calls it, trained as two layers.

    ``table`` (``n x k``, sparse gradients when ``sparse``) pools the bag, then
    ``proj`` (``k -> d``, no bias, no activation) maps it to the model width.
    Pooling and projection are both linear, so ``fold()`` turns the pair into
    one ``n x d`` table with the same outputs for sum and mean bags, weighted or
    not. Max pooling is not linear and is refused.
    """

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        hidden_dim,
        mode="sum",
        sparse=True,
        proj_init="normal",
        padding_idx=None,
        include_last_offset=False,
        _init=True,
    ):
        super().__init__()
        for name, value in (
            ("num_embeddings", num_embeddings),
            ("embedding_dim", embedding_dim),
            ("hidden_dim", hidden_dim),
        ):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise MLETError(f"MLETEmbeddingBag: {name} must be a positive integer, got {value!r}")
        if mode not in FOLDABLE_MODES:
            raise MLETError(
                f"MLETEmbeddingBag: mode={mode!r} is not supported; folding is exact "
                f"only for {' and '.join(FOLDABLE_MODES)} pooling"
            )
        n, d, k = int(num_embeddings), int(embedding_dim), int(hidden_dim)
        # padding_idx and include_last_offset are nn.EmbeddingBag's own: the padding row is
        # left out of every bag (and of the gradient), so it folds to a row left out too.
        self.table = nn.EmbeddingBag(n, k, mode=mode, sparse=sparse, padding_idx=padding_idx,
                                     include_last_offset=include_last_offset, _weight=torch.empty(n, k))
        self.proj = nn.Linear(k, d, bias=False)
        if _init:
            uniform_table_(self.table.weight)
            init_projection_(self.proj.weight, proj_init)
            if padding_idx is not None:
                with torch.no_grad():
                    self.table.weight[self.table.padding_idx].zero_()

    @classmethod
    def from_weights(cls, table_weight, proj_weight, mode="sum", sparse=True):
        """Rebuild a table from saved ``table.weight`` (n x k) and ``proj.weight`` (d x k)."""
        n, k = table_weight.shape
        d, k2 = proj_weight.shape
        if k != k2:
            raise MLETError(
                f"table.weight is {n}x{k} but proj.weight is {d}x{k2}: hidden widths differ"
            )
        bag = cls(n, d, k, mode=mode, sparse=sparse, _init=False)
        with torch.no_grad():
            # Shares storage with the given tensors: verifying a 10M-row table
            # must not need a second copy of it.
            bag.table.weight = nn.Parameter(table_weight.detach())
            bag.proj.weight = nn.Parameter(proj_weight.detach().to(table_weight.dtype))
        return bag

    @property
    def num_embeddings(self):
        return self.table.num_embeddings

    @property
    def embedding_dim(self):
        return self.proj.out_features

    @property
    def hidden_dim(self):
        return self.table.embedding_dim

    @property
    def mode(self):
        return self.table.mode

    @property
    def sparse(self):
        return self.table.sparse

    def forward(self, input, offsets=None, per_sample_weights=None):
        # Pool first on the k-wide rows, then project the (batch, k) result:
        # the n x d product is never formed during training.
        return self.proj(self.table(input, offsets, per_sample_weights=per_sample_weights))

    def fold(self, name=None):
        """Return the equivalent plain ``nn.EmbeddingBag(n, d)``, same dtype and device.

        The product is formed in row blocks with bounded extra memory and checked
        to be finite first, so a diverged run fails here, naming the table,
        instead of producing a model that predicts NaN.
        """
        weight = fold_weight(self.table.weight, self.proj.weight, name or repr(self))
        return nn.EmbeddingBag(
            self.num_embeddings,
            self.embedding_dim,
            mode=self.mode,
            sparse=self.sparse,
            padding_idx=self.table.padding_idx,
            include_last_offset=self.table.include_last_offset,
            _weight=weight,
        )

    def extra_repr(self):
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, hidden_dim={self.hidden_dim}, "
            f"mode={self.mode!r}"
        )


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
            pooled = first.new_empty(count, offsets[0].numel(), first.shape[1])
            for t, (i, a, o, w) in enumerate(zip(indices, tables, offsets, weights)):
                if w is None and one_hot:
                    torch.index_select(a, 0, i, out=pooled[t])  # a one-row bag is its row
                else:
                    pooled[t] = nn.functional.embedding_bag(i, a, o, mode=mode, per_sample_weights=w)
            proj = torch.stack(projs)
            out = torch.bmm(pooled, proj.transpose(1, 2))
        ctx.mode, ctx.indices, ctx.offsets, ctx.weights = mode, indices, offsets, weights
        ctx.one_hot = one_hot
        ctx.shapes = [a.shape for a in tables]
        ctx.tables = tables if fuse else None
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
            if ctx.tables is not None:  # --mlet-fused-update: the optimizer's step applies the rows
                fused.add(ctx.tables[t], idx, rows)
                grad_tables.append(None)
            else:
                grad_tables.append(torch.sparse_coo_tensor(idx.unsqueeze(0), rows, shape, check_invariants=False))
        return (None, None, None, None, None, *grad_tables, *grad_proj)


def grouped_forward(tables, indices, offsets, weights):
    """Outputs of a list of tables (DLRM's ``emb_l``) for one batch: a list of ``(batch, d)``.

    MLET tables with the same widths, mode and device share one ``_Grouped``
    node per such group; the others (plain tables, dense gradients, 2-D inputs,
    trainable per-sample weights, padding rows, ``include_last_offset``, a group of one)
    are called one by one.
    With ``fused.enable()`` (``--mlet-fused-update``) grouped tables get no
    gradient: their rows go to the optimizer's next step instead; with
    ``fused.enable("fbgemm")`` fbgemm's TBE pools them and applies that step.
    """
    def groupable(t, i, o, w):
        return (isinstance(t, MLETEmbeddingBag) and t.sparse and i.dim() == 1 and o is not None
                and t.table.padding_idx is None and not t.table.include_last_offset
                and not (w is not None and w.requires_grad))

    outputs = [None] * len(tables)
    groups = {}
    if torch.is_grad_enabled():
        for j, args in enumerate(zip(tables, indices, offsets, weights)):
            if groupable(*args):
                t = tables[j]
                key = (t.hidden_dim, t.embedding_dim, t.mode, t.table.weight.device,
                       t.table.weight.dtype, offsets[j].numel(), weights[j] is None)
                groups.setdefault(key, []).append(j)
    for (_, _, mode, *_), members in groups.items():
        if len(members) < 2:
            continue
        members_indices, members_offsets = [indices[j] for j in members], [offsets[j] for j in members]
        members_weights = [weights[j] for j in members]
        projs = [tables[j].proj.weight for j in members]
        # fbgemm would accept weights with mean pooling; _Grouped raises nn.EmbeddingBag's error for it
        if fused.backend() == "fbgemm" and not (mode == "mean" and members_weights[0] is not None):
            group = tbe.group_for([tables[j] for j in members])
            grouped = tbe.Grouped.apply(group, members_indices, members_offsets, members_weights, *projs)
        else:
            grouped = _Grouped.apply(mode, fused.enabled(), members_indices, members_offsets, members_weights,
                                     *[tables[j].table.weight for j in members], *projs)
        for j, out in zip(members, grouped.unbind(0)):
            outputs[j] = out
    for j, out in enumerate(outputs):
        if out is None:
            outputs[j] = tables[j](indices[j], offsets[j], per_sample_weights=weights[j])
    return outputs
