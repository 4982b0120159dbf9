"""How MLET tables and projections start: DLRM's table init and the MLET authors' projection init.

Both draw from numpy's global RNG, as DLRM's tables do, so ``--numpy-rand-seed``
alone reproduces a run.
"""

import math

import numpy as np
import torch

from .options import parse_proj_init


# Rows drawn per numpy call when initialising a table: bounds the float64
# temporary numpy makes (16 MiB) whatever the table size.
_INIT_CHUNK_ELEMS = 2**21


def uniform_table_(weight: torch.Tensor) -> torch.Tensor:
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


def init_projection_(weight: torch.Tensor, spec: str) -> torch.Tensor:
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


