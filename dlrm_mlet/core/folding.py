"""Folding: turn trained ``table @ proj.T`` pairs into plain ``n x d`` tables.

Three levels share one kernel, ``fold_weight``: a single table
(``MLETEmbeddingBag.fold``), a whole model in place (``convert.fold_model``) and a
saved state dict (``fold_state_dict``). Folding is exact up to float rounding
because pooling and projection are both linear:
``pool(A[idx]) @ B.T == pool((A @ B.T)[idx])``.
"""

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import MLETError

# Bytes of scratch a fold may use per row block, beyond the input and output
# tables. Chosen far below the 64 MiB promise so BLAS workspace fits too.
FOLD_BLOCK_BYTES = 16 * 2**20

TABLE_KEY = "table.weight"
PROJ_KEY = "proj.weight"
# An MLET pair standing in for one parameter of a composite table (DLRM's QREmbeddingBag keeps its two
# tables as parameters weight_q and weight_r): it folds to that parameter, not to "<slot>.weight".
PARAMETER_SLOTS = ("weight_q", "weight_r")


def folded_key(prefix: str) -> str:
    """The stock key an MLET pair at ``prefix`` (``'emb_l.3.'``) folds to: ``'emb_l.3.weight'``, or the slot."""
    module = prefix.rstrip(".")
    return module if module.rpartition(".")[2] in PARAMETER_SLOTS else prefix + "weight"


def fold_weight(table_weight: torch.Tensor, proj_weight: torch.Tensor, name: str,
                block_bytes: int = FOLD_BLOCK_BYTES) -> torch.Tensor:
    """Return ``table_weight @ proj_weight.T`` (n x d), checked finite.

    Computed block by block straight into the result, so the scratch memory is
    bounded by ``block_bytes`` whatever ``n``. Keeps the table's dtype and
    device, or the projection's where it is wider: a half-precision table with a
    float32 projection (``--mlet-table-dtype``) folds to a float32 table, as
    stock DLRM trains it. Half-precision products are computed in float32.
    """
    a = table_weight.detach()
    b = proj_weight.detach().to(device=a.device)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise MLETError(
            f"{name}: cannot fold a {tuple(a.shape)} table with a {tuple(b.shape)} "
            "projection (expected n x k and d x k)"
        )
    n, k = a.shape
    d = b.shape[0]
    dtype = torch.promote_types(a.dtype, b.dtype)
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    bt = b.to(compute).t().contiguous()
    out = torch.empty(n, d, dtype=dtype, device=a.device)
    rows = max(1, block_bytes // (4 * (k + d) + 1))
    with torch.no_grad():
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            block = out[start:stop]
            if compute == a.dtype == dtype:
                torch.mm(a[start:stop], bt, out=block)
            else:
                block.copy_(a[start:stop].to(compute) @ bt)
            row = non_finite_row(block)
            if row is not None:
                raise MLETError(
                    f"{name}: folded row {start + row} is not finite (nan or inf); the table or "
                    "its projection diverged, so nothing was folded"
                )
    return out


def non_finite_row(tensor: torch.Tensor) -> Optional[int]:
    """The first row (index along dim 0) holding a NaN or inf, or None.

    One cheap reduction in the usual, finite case; only a non-finite sum (a bad
    value, or finite values overflowing the sum) looks row by row.
    """
    t = tensor.detach()
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return None
    finite = torch.isfinite(t.reshape(t.shape[0], -1) if t.dim() else t.reshape(1, 1)).all(dim=1)
    return None if bool(finite.all()) else int((~finite).nonzero()[0])


def first_non_finite(state_dict: Mapping[str, Any]) -> Optional[Tuple[str, int]]:
    """``(key, row)`` of the first parameter in a state dict that holds NaN or inf, or None.

    Checks the raw values (tables, projections, MLPs alike): a model with any
    of them non-finite predicts NaN and is useless to resume.
    """
    for key, value in state_dict.items():
        row = non_finite_row(value) if torch.is_tensor(value) else None
        if row is not None:
            return key, row
    return None


def key_prefix(key: str, suffix: str) -> Optional[str]:
    """``'emb_l.3.table.weight' -> 'emb_l.3.'``; None when ``key`` lacks ``suffix``."""
    if key == suffix:
        return ""
    if key.endswith("." + suffix):
        return key[: -len(suffix)]
    return None


def mlet_prefixes(state_dict: Mapping[str, Any]) -> List[str]:
    """Prefixes (``'emb_l.3.'``) of the MLET tables in a state dict, in key order.

    A table counts only when both its ``table.weight`` and ``proj.weight`` are
    present, so an unrelated module that happens to be called ``table`` is
    left alone.
    """
    return [
        p
        for key in state_dict
        if (p := key_prefix(key, TABLE_KEY)) is not None and p + PROJ_KEY in state_dict
    ]


def mlet_table_bytes(state_dict: Mapping[str, torch.Tensor]) -> Tuple[int, int]:
    """Bytes of the MLET tables now (table + projection) and once folded (n x d)."""
    now = folded = 0
    for p in mlet_prefixes(state_dict):
        table, proj = state_dict[p + TABLE_KEY], state_dict[p + PROJ_KEY]
        now += table.numel() * table.element_size() + proj.numel() * proj.element_size()
        folded += table.shape[0] * proj.shape[0] * torch.promote_types(table.dtype, proj.dtype).itemsize
    return now, folded


def fold_state_dict(state_dict: Mapping[str, torch.Tensor],
                    progress: Optional[Callable[[int], object]] = None) -> Dict[str, torch.Tensor]:
    """Return a new state dict with each MLET pair replaced by the stock key.

    ``emb_l.3.table.weight`` + ``emb_l.3.proj.weight`` become
    ``emb_l.3.weight`` at the table's position; every other key and value is
    passed through untouched. The input is not modified. ``progress(rows)`` is
    called after each table (for a progress bar).
    """
    prefixes = set(mlet_prefixes(state_dict))
    out = OrderedDict()
    for key, value in state_dict.items():
        table = key_prefix(key, TABLE_KEY)
        if table in prefixes:
            new_key = folded_key(table)
            if new_key in state_dict:
                raise MLETError(f"{table}: both an MLET pair and a plain {new_key!r} are present")
            out[new_key] = fold_weight(value, state_dict[table + PROJ_KEY], table.rstrip(".") or "table")
            if progress:
                progress(value.shape[0])
        elif key_prefix(key, PROJ_KEY) not in prefixes:
            out[key] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        # Module versions travel with a state dict (torch keeps them in its _metadata attribute); the
        # folded table takes the place (and the version) of the EmbeddingBag it came from.
        versions = OrderedDict(metadata)
        for table in prefixes:
            module = table.rstrip(".")
            versions.pop(table + "proj", None)
            version = versions.pop(table + "table", {})
            if folded_key(table) == module:  # a parameter of its parent now, not a module of its own
                versions.pop(module, None)
            else:
                versions[module] = version
        setattr(out, "_metadata", versions)
    return out
