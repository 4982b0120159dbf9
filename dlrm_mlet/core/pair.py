"""What both MLET forms share: an ``n x k`` table whose rows a ``k -> d`` projection maps.

``MLETEmbeddingBag`` and ``MLETEmbedding`` differ only in their table (a bag
or a lookup) and so in the plain class they fold back into; sizes, init,
the padding row and the folded weight are the same rule for both, kept here.
"""

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from torch import nn

from ..errors import integer
from . import half, step
from .folding import fold_weight
from .init import init_projection_, uniform_table_


def check_sizes(kind: str, **sizes: int) -> List[int]:
    """The sizes as ints; a non-positive or non-integer one is refused, named."""
    return [integer(value, f"{kind}: {name}", 1) for name, value in sizes.items()]


def is_mlet(module: object) -> bool:
    """Whether ``module`` is an MLET form (the one rule; ``folding.mlet_prefixes`` is its state-dict twin)."""
    return isinstance(module, TwoLayer)


@dataclass(frozen=True)
class Update:
    """How a table's gradient rows reach it: ``backend`` None (sparse gradients, for the optimizer to
    apply), ``"torch"`` (the optimizer's ``rule``, applied by its step straight to the rows:
    ``engine/fused.py``) or ``"fbgemm"`` (fbgemm's table-batched embedding, SGD). Half tables take
    their rule at the step whatever it says (``half.py``)."""

    backend: Optional[str] = None
    rule: str = "sgd"

    def __str__(self) -> str:
        return "sparse gradients" if self.backend is None else f"{self.rule} at the step ({self.backend})"


SPARSE = Update()


class TwoLayer(nn.Module):
    """Base of the MLET forms: ``table`` (``n x k``) then ``proj`` (``k -> d``, no bias); ``update``:
    how its gradient rows are applied (a declared field, set with ``set_update``, shown in its repr)."""

    table: Union[nn.EmbeddingBag, nn.Embedding]
    proj: nn.Linear
    update: Update = SPARSE

    def set_update(self, update: Update) -> "TwoLayer":
        """Declare how this table is updated (``engine/fused.use`` checks and sets it); returns it."""
        self.update = update
        return self

    def _attach(self, table, embedding_dim, proj_init, init):
        self.table = table
        self.proj = nn.Linear(table.embedding_dim, embedding_dim, bias=False)
        if init:
            uniform_table_(table.weight)
            init_projection_(self.proj.weight, proj_init)
        if table.padding_idx is not None:  # looks up (or pools) nothing, as in the plain module
            with torch.no_grad():
                table.weight[table.padding_idx].zero_()
        if half.is_half(table.weight):  # step.attach(optimizer) can refuse an optimizer it has no rule for
            step.require(table.weight, half.check_optimizer)

    @property
    def num_embeddings(self) -> int:
        return self.table.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.proj.out_features

    @property
    def hidden_dim(self) -> int:
        return self.table.embedding_dim

    @property
    def padding_idx(self) -> Optional[int]:
        return self.table.padding_idx

    @property
    def sparse(self) -> bool:
        return self.table.sparse

    def folded_weight(self, name: Optional[str] = None) -> torch.Tensor:
        """``table @ proj.T`` (n x d), in row blocks with bounded extra memory, checked finite first:
        a diverged run fails here, naming the table, instead of giving a model that predicts NaN."""
        return fold_weight(self.table.weight, self.proj.weight, name or repr(self))
