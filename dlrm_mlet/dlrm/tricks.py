"""MLET inside DLRM's own compressed tables: quotient-remainder (``--qr-flag``) and mixed dimensions (``--md-flag``).

Both are orthogonal to MLET: QR shrinks a table's rows, MD a rare table's
width, MLET how a table is trained. Each composes with it where the folded
model stays the one stock DLRM builds with the same flags:

* QR: DLRM's ``QREmbeddingBag`` pools a quotient table (``idx // c``) and a
  remainder table (``idx % c``) on their own, then combines them (concat,
  add or mult). ``MLETQREmbeddingBag`` trains each as an MLET table; pooling
  and projection are linear and happen before the combination, so each folds
  exactly, to the ``weight_q`` and ``weight_r`` of a stock ``QREmbeddingBag``
  (``core.folding.PARAMETER_SLOTS``). Indices are split exactly as stock
  splits them (float division, then truncation, which loses precision for
  indices past 2^24: stock's behaviour, kept).
* MD: DLRM's ``PrEmbeddingBag`` is an ``n x d_i`` table and a ``d_i -> d``
  projection. Its table trains as MLET (``n x k_i`` then ``k_i -> d_i``) and
  MD's own projection stays, so it folds to exactly the tensors stock MD
  holds. ``k_i = K * d_i / d`` (rounded up to a multiple of 8, at least
  ``d_i``): every table keeps the ratio k/d that ``--mlet-hidden-dim K``
  gives the widest tables, so MLET's training memory grows with what MD
  stores, and the narrow (large, rare) tables MD shrinks do not each get a
  ``K``-wide table, which would spend on them the memory MD saved.

Stock's own classes are built (from the DLRM script's namespace), so a table
left plain is stock's, with stock's init.
"""

import math
import sys
from typing import Optional, Protocol, Type, cast

import numpy as np
import torch
from torch import nn

from ..core.convert import register_kind


class MakeTable(Protocol):
    """``make(rows, dim[, hidden])``: the MLET table (``rows x hidden`` then ``hidden -> dim``) a composite holds."""

    def __call__(self, rows: int, dim: int, hidden: int = ...) -> nn.Module: ...


def stock_class(net: nn.Module, name: str) -> Type[nn.Module]:
    """``QREmbeddingBag`` or ``PrEmbeddingBag`` as the running DLRM script imported it."""
    return getattr(sys.modules[type(net).__module__], name)


@register_kind  # fold_model folds it to the stock QREmbeddingBag
class MLETQREmbeddingBag(nn.Module):
    """DLRM's ``QREmbeddingBag`` (sum pooling, sparse) with its two tables trained as MLET tables."""

    def __init__(self, stock: Type[nn.Module], num_categories: int, embedding_dim: int, num_collisions: int,
                 operation: str, make: MakeTable) -> None:
        super().__init__()
        self.stock, self.num_categories, self.num_collisions = stock, num_categories, num_collisions
        self.embedding_dim, self.operation, self.mode = embedding_dim, operation, "sum"
        self.num_embeddings = [int(np.ceil(num_categories / num_collisions)), num_collisions]
        self.weight_q = make(self.num_embeddings[0], embedding_dim)
        self.weight_r = make(self.num_embeddings[1], embedding_dim)

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        input_q = (input / self.num_collisions).long()  # as stock splits the indices
        input_r = torch.remainder(input, self.num_collisions).long()
        embed_q = self.weight_q(input_q, offsets, per_sample_weights=per_sample_weights)
        embed_r = self.weight_r(input_r, offsets, per_sample_weights=per_sample_weights)
        if self.operation == "concat":
            return torch.cat((embed_q, embed_r), dim=1)
        return embed_q + embed_r if self.operation == "add" else embed_q * embed_r

    def fold(self, name: Optional[str] = None) -> nn.Module:
        """The stock ``QREmbeddingBag`` holding the two folded tables."""
        folded = self.stock(self.num_categories, self.embedding_dim, self.num_collisions, operation=self.operation,
                            mode="sum", sparse=True)
        with torch.no_grad():
            for slot in ("weight_q", "weight_r"):
                table = getattr(self, slot)
                getattr(folded, slot).copy_(table.folded_weight(f"{name}.{slot}" if name else slot))
        return folded


def md_hidden_dim(k: int, d: int, width: int) -> int:
    """``k_i`` of a mixed-dimension table of width ``d`` when the widest, ``width``, gets ``k`` (module docstring)."""
    return max(d, 8 * math.ceil(k * d / width / 8))


def md_table(net: nn.Module, n: int, d: int, width: int, k: int, make: MakeTable) -> nn.Module:
    """DLRM's ``PrEmbeddingBag(n, d, width)``, its table an MLET table of hidden width ``k`` (0: stock's)."""
    table = stock_class(net, "PrEmbeddingBag")(n, d, width)
    if k:
        table.embs = make(n, d, k)
    else:  # stock's init, as DLRM's create_emb draws it
        weight = np.random.uniform(low=-np.sqrt(1 / n), high=np.sqrt(1 / n), size=(n, d)).astype(np.float32)
        cast(nn.EmbeddingBag, table.embs).weight.data = torch.tensor(weight, requires_grad=True)
    return table
