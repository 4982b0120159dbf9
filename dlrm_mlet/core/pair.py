"""What both MLET forms share: an ``n x k`` table whose rows a ``k -> d`` projection maps.

``MLETEmbeddingBag`` and ``MLETEmbedding`` differ only in their table (a bag
or a lookup) and so in the plain class they fold back into; sizes, init,
the padding row and the folded weight are the same rule for both, kept here.
"""

from typing import Union

import torch
from torch import nn

from ..errors import integer
from . import half, step
from .folding import fold_weight
from .init import init_projection_, uniform_table_


def check_sizes(kind, **sizes):
    """The sizes as ints; a non-positive or non-integer one is refused, named."""
    return [integer(value, f"{kind}: {name}", 1) for name, value in sizes.items()]


def is_mlet(module):
    """Whether ``module`` is an MLET form (the one rule; ``folding.mlet_prefixes`` is its state-dict twin)."""
    return isinstance(module, TwoLayer)


class TwoLayer(nn.Module):
    """Base of the MLET forms: ``table`` (``n x k``) then ``proj`` (``k -> d``, no bias)."""

    table: Union[nn.EmbeddingBag, nn.Embedding]
    proj: nn.Linear

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
    def num_embeddings(self):
        return self.table.num_embeddings

    @property
    def embedding_dim(self):
        return self.proj.out_features

    @property
    def hidden_dim(self):
        return self.table.embedding_dim

    @property
    def padding_idx(self):
        return self.table.padding_idx

    @property
    def sparse(self):
        return self.table.sparse

    def folded_weight(self, name=None):
        """``table @ proj.T`` (n x d), in row blocks with bounded extra memory, checked finite first:
        a diverged run fails here, naming the table, instead of giving a model that predicts NaN."""
        return fold_weight(self.table.weight, self.proj.weight, name or repr(self))
