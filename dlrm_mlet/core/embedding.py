"""``MLETEmbedding``: the MLET form of ``nn.Embedding``, for models built on lookups, not bags.

Most CTR models outside DLRM (DeepFM, DCN, two-tower retrieval) look rows up
with ``nn.Embedding`` and pool or interact them themselves. The MLET form is
the same two layers as ``MLETEmbeddingBag``: an ``n x k`` table, then a
``k -> d`` projection of each looked-up row, which folds exactly into one
``n x d`` table because a lookup is linear in the table.
"""

from typing import Optional

import torch
from torch import nn

from . import half
from .pair import TwoLayer, check_sizes


class MLETEmbedding(TwoLayer):
    """Drop-in for ``nn.Embedding`` (``forward(input) -> (*input.shape, d)``), trained as two layers.

    ``padding_idx`` behaves as in ``nn.Embedding``: that row of the table starts
    at zero and gets no gradient, so it looks up zeros through training and
    folds to a zero row. ``sparse`` gives the table sparse gradients, as
    ``nn.Embedding(sparse=True)`` does; the projection's gradient is dense.
    ``max_norm`` and ``scale_grad_by_freq`` are refused: neither has an exact
    folded equivalent. ``table_dtype`` as in ``MLETEmbeddingBag``.
    """

    table: nn.Embedding

    def __init__(self, num_embeddings: int, embedding_dim: int, hidden_dim: int, padding_idx: Optional[int] = None,
                 sparse: bool = False, proj_init: str = "normal", table_dtype: half.TableDtype = None,
                 _init: bool = True) -> None:
        super().__init__()
        n, d, k = check_sizes("MLETEmbedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                              hidden_dim=hidden_dim)
        table = nn.Embedding(n, k, padding_idx=padding_idx, sparse=sparse,
                             _weight=torch.empty(n, k, dtype=half.table_dtype(table_dtype)))
        self._attach(table, d, proj_init, _init)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.table.weight
        if half.is_half(weight):  # float32 rows, stochastically rounded updates (half.py)
            return self.proj(half.lookup(weight, input, self.padding_idx).to(self.proj.weight.dtype))
        return self.proj(self.table(input))

    def fold(self, name: Optional[str] = None) -> nn.Embedding:
        """The equivalent ``nn.Embedding(n, d)`` with the same options, dtype and device.

        Finite-checked and blocked like ``MLETEmbeddingBag.fold``.
        """
        return nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                            sparse=self.sparse, _weight=self.folded_weight(name))

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}, hidden_dim={self.hidden_dim}{pad}"
