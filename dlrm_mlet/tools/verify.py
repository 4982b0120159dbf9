"""Check that folded tables give the MLET outputs, on random bags.

The same idea as RepVGG's separate equivalence script: the fold is exact in
exact arithmetic, and this measures what float rounding leaves, per table,
for the three ways DLRM pools (sum, mean, per-sample-weighted sum).
"""

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

import torch

from ..core.folding import PROJ_KEY, TABLE_KEY, fold_weight, mlet_prefixes
from ..errors import MLETError

DEFAULT_TOLERANCE = 1e-5


@dataclass
class TableCheck:
    name: str
    rows: int
    hidden_dim: int
    embedding_dim: int
    max_abs_diff: float
    output_scale: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * self.output_scale


def random_bags(num_embeddings: int, bags: int, max_bag: int,
                generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices, offsets and weights for ``bags`` bags of 0..max_bag rows each.

    Empty bags and repeated indices are included on purpose: both are legal in
    DLRM inputs and both must fold exactly.
    """
    lengths = torch.randint(0, max_bag + 1, (bags,), generator=generator)
    offsets = torch.zeros(bags, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    indices = torch.randint(0, num_embeddings, (int(lengths.sum()),), generator=generator)
    weights = torch.randn(indices.shape, generator=generator)
    return indices, offsets, weights


def check_table(name: str, table_weight: torch.Tensor, proj_weight: torch.Tensor,
                folded_weight: Optional[torch.Tensor] = None, bags: int = 512, max_bag: int = 20,
                tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> TableCheck:
    """Largest |MLET - folded| over sum, mean and weighted bags, against the output scale."""
    table_weight = table_weight.detach().float()
    proj_weight = proj_weight.detach().float()
    if folded_weight is None:
        folded_weight = fold_weight(table_weight, proj_weight, name)
    folded_weight = folded_weight.detach().float()
    n, k = table_weight.shape
    d = proj_weight.shape[0]
    if folded_weight.shape != (n, d):
        raise MLETError(
            f"{name}: folded table is {tuple(folded_weight.shape)}, expected {(n, d)} "
            f"from the {n}x{k} table and {d}x{k} projection"
        )
    generator = torch.Generator().manual_seed(seed)
    indices, offsets, weights = random_bags(n, bags, max_bag, generator)
    bag = torch.nn.functional.embedding_bag
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for mode, psw in (("sum", None), ("mean", None), ("sum", weights)):
            mlet = bag(indices, table_weight, offsets, mode=mode, per_sample_weights=psw) @ proj_weight.t()
            plain = bag(indices, folded_weight, offsets, mode=mode, per_sample_weights=psw)
            worst = max(worst, float((mlet - plain).abs().max()))
            scale = max(scale, float(mlet.abs().max()))
    return TableCheck(name, n, k, d, worst, max(scale, torch.finfo(torch.float32).tiny), tolerance)


def verify_state_dict(state_dict: Mapping[str, torch.Tensor],
                      folded_state_dict: Optional[Mapping[str, torch.Tensor]] = None, folded_name: Optional[str] = None,
                      **kwargs: Any) -> List[TableCheck]:
    """Check every MLET table of ``state_dict``; optionally against a saved folded one (``folded_name``:
    how an error about it names it)."""
    prefixes = mlet_prefixes(state_dict)
    if not prefixes:
        raise MLETError("no MLET tables to verify (the checkpoint is plain or already folded)")
    checks = []
    for prefix in prefixes:
        name = prefix.rstrip(".") or "table"
        folded = None
        if folded_state_dict is not None:
            folded = folded_state_dict.get(prefix + "weight")
            if folded is None:
                raise MLETError(f"{folded_name or 'the folded checkpoint'}: no {prefix + 'weight'!r} for table {name} "
                                "(is it the fold of this checkpoint?)")
        try:
            checks.append(
                check_table(name, state_dict[prefix + TABLE_KEY], state_dict[prefix + PROJ_KEY], folded, **kwargs)
            )
        except MLETError as error:  # a folded table of the wrong shape: the folded file's fault
            raise MLETError(f"{folded_name or 'the folded checkpoint'}: {error}" if folded is not None
                            else str(error)) from None
    return checks
