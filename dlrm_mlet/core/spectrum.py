"""Singular values and effective rank of embedding tables, folded or not.

The MLET papers explain its gain by the effective rank of the learned
embeddings: a d-wide table trained directly tends to use few of its d
directions, a table trained as ``A @ B.T`` uses more. Effective rank here is
``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s`` (Roy &
Vetterli 2007): d for a table whose directions are equally used, 1 for rank one.

Every function works on the folded-equivalent ``n x d`` table ``W = A @ B.T``
without forming it: the ``d x d`` Gram ``W.T @ W`` is accumulated over row
blocks, and its eigenvalues are the squared singular values of ``W``.
"""

import math
from typing import Optional, Sequence, Union

import torch

from ..core.folding import FOLD_BLOCK_BYTES


def effective_rank(singular_values: Union[torch.Tensor, Sequence[float]]) -> float:
    """exp of the entropy of the normalised singular values (0 for a zero matrix)."""
    s = torch.as_tensor(singular_values, dtype=torch.float64).clamp_min(0)
    total = float(s.sum())
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def gram(table_weight: torch.Tensor, proj_weight: Optional[torch.Tensor] = None,
         rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``W.T @ W`` (d x d, float64) of the table or of ``table @ proj.T``.

    ``rows`` restricts it to those row indices (a sample); blocks keep the
    scratch memory bounded whatever the table size.
    """
    a = table_weight.detach()
    if rows is not None:
        a = a[rows]
    # A half table (--mlet-table-dtype) is multiplied in its float32 projection's precision.
    b = None if proj_weight is None else proj_weight.detach().to(torch.promote_types(a.dtype, proj_weight.dtype))
    width = a.shape[1] if b is None else b.shape[0]
    out = torch.zeros(width, width, dtype=torch.float64, device=a.device)
    step = max(1, FOLD_BLOCK_BYTES // (4 * (a.shape[1] + width)))
    for start in range(0, a.shape[0], step):
        block = a[start:start + step]
        if b is not None:
            block = block.to(b.dtype) @ b.t()  # the k-wide product in the pair's precision: fast BLAS
        block = block.to(torch.float64)  # only the d-wide rows are summed in float64
        out += block.t() @ block
    return out


def singular_values(table_weight: torch.Tensor, proj_weight: Optional[torch.Tensor] = None,
                    rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Singular values of the (folded-equivalent) table, largest first.

    With ``rows`` (a uniform sample of m of the n rows) they are scaled by
    ``sqrt(n / m)``, an unbiased estimate of the full table's Gram.
    """
    g = gram(table_weight, proj_weight, rows)
    values = torch.linalg.eigvalsh(g).clamp_min(0).sqrt().flip(0)
    if rows is not None and len(rows):
        values *= math.sqrt(table_weight.shape[0] / len(rows))
    return values
