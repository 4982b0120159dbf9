"""The MLET table: an ``n x k`` embedding bag followed by a ``k -> d`` projection.

The training form and its folded inference form live in one class (as RepVGG
keeps a block and its equivalent kernel together), so the two can never drift.
"""

from typing import Any, Optional

import torch
from torch import nn

from ..errors import MLETError
from . import half
from .pair import TwoLayer, check_sizes

FOLDABLE_MODES = ("sum", "mean")


class MLETEmbeddingBag(TwoLayer):
    """Drop-in for ``nn.EmbeddingBag`` as DLRM calls it, trained as two layers.

    ``table`` (``n x k``, sparse gradients when ``sparse``) pools the bag, then
    ``proj`` (``k -> d``, no bias, no activation) maps it to the model width.
    Pooling and projection are both linear, so ``fold()`` turns the pair into
    one ``n x d`` table with the same outputs for sum and mean bags, weighted or
    not. Max pooling is not linear and is refused. ``table_dtype`` (``"fp16"``,
    ``"bf16"`` or a torch dtype) stores the table in half precision; the
    projection stays float32 and the table is updated by ``half.py``.
    """

    table: nn.EmbeddingBag
    _tbe_group: Any = None  # engine/tbe.py's TBEGroup holding this table's rows (--mlet-fused-update=fbgemm)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        hidden_dim: int,
        mode: str = "sum",
        sparse: bool = True,
        proj_init: str = "normal",
        padding_idx: Optional[int] = None,
        include_last_offset: bool = False,
        table_dtype: half.TableDtype = None,
        _init: bool = True,
    ) -> None:
        super().__init__()
        n, d, k = check_sizes("MLETEmbeddingBag", num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                              hidden_dim=hidden_dim)
        if mode not in FOLDABLE_MODES:
            raise MLETError(
                f"MLETEmbeddingBag: mode={mode!r} is not supported; folding is exact "
                f"only for {' and '.join(FOLDABLE_MODES)} pooling"
            )
        # padding_idx and include_last_offset are nn.EmbeddingBag's own: the padding row is
        # left out of every bag (and of the gradient), so it folds to a row left out too.
        table = nn.EmbeddingBag(n, k, mode=mode, sparse=sparse, padding_idx=padding_idx,
                                include_last_offset=include_last_offset,
                                _weight=torch.empty(n, k, dtype=half.table_dtype(table_dtype)))
        self._attach(table, d, proj_init, _init)

    @classmethod
    def from_weights(cls, table_weight: torch.Tensor, proj_weight: torch.Tensor, mode: str = "sum",
                     sparse: bool = True) -> "MLETEmbeddingBag":
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
            # A half table keeps its float32 projection (--mlet-table-dtype); otherwise one dtype.
            proj_dtype = proj_weight.dtype if half.is_half(table_weight) else table_weight.dtype
            bag.proj.weight = nn.Parameter(proj_weight.detach().to(proj_dtype))
        return bag

    @property
    def mode(self) -> str:
        return self.table.mode

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Pool first on the k-wide rows, then project the (batch, k) result:
        # the n x d product is never formed during training.
        weight = self.table.weight
        if half.is_half(weight):  # float32 pooling, stochastically rounded updates
            pooled = half.pool(weight, input, offsets, per_sample_weights, self.mode, self.padding_idx,
                               self.table.include_last_offset)
            return self.proj(pooled.to(self.proj.weight.dtype))
        return self.proj(self.table(input, offsets, per_sample_weights=per_sample_weights))

    def fold(self, name: Optional[str] = None) -> nn.EmbeddingBag:
        """Return the equivalent plain ``nn.EmbeddingBag(n, d)``: same options, dtype and device."""
        return nn.EmbeddingBag(
            self.num_embeddings,
            self.embedding_dim,
            mode=self.mode,
            sparse=self.sparse,
            padding_idx=self.padding_idx,
            include_last_offset=bool(self.table.include_last_offset),
            _weight=self.folded_weight(name),
        )

    def extra_repr(self) -> str:
        dtype = "" if self.table.weight.dtype == self.proj.weight.dtype else f", table_dtype={self.table.weight.dtype}"
        update = "" if self.update.backend is None else f", update={self.update}"
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, hidden_dim={self.hidden_dim}, "
            f"mode={self.mode!r}{dtype}{update}"
        )
