"""A tuned sweep: each arm's learning rate searched until its optimum is inside its grid, more seeds where arms are close.

What a reviewer of an embedding-compression result asks of every arm,
baselines as much as MLET: the learning rate chosen on the validation split
and not at the edge of what was tried, and enough seeds to tell two arms apart.

``tune`` drives any sweep (``sweep.run_sweep``, which skips finished runs, so a
stopped tuning resumes where it stopped): every arm's first grid and seeds;
while an arm's chosen lr is the smallest or largest it tried (or every lr
diverged), the next factor of 2 beyond it, for every seed (at most
``max_extensions`` times); then, for each extra seed, both arms of every close
pair at their chosen lr. A pair is close when their tuned test AUCs differ by
less than two standard errors of the difference: an MLET arm and the baseline
of its d (the gain at equal d), and an MLET arm and a wider baseline (whether
the narrower model matches it).
"""

import math
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, cast

from . import pays
from .report import Arm, Stats, summarize, tuned
from .results_csv import Row, Run

# First grid per optimizer and k (0: the baseline), SGD at batch 128: the optimum falls with k
# (the projection multiplies the table's step); Adagrad's steps are normalised, so its grid sits ~30x lower.
GRIDS = {
    "sgd": {0: (0.2, 0.4, 0.8, 1.6), 64: (0.1, 0.2, 0.4, 0.8), 256: (0.025, 0.05, 0.1, 0.2)},
    "adagrad": {0: (0.005, 0.01, 0.02, 0.04), 64: (0.0025, 0.005, 0.01, 0.02), 256: (0.0025, 0.005, 0.01, 0.02)},
}
GRIDS["rwsadagrad"] = GRIDS["adagrad"]
MAX_EXTENSIONS = 4


def first_grid(optimizer: str, k: int) -> Tuple[float, ...]:
    """The lrs an arm starts from: its k's grid, or the nearest k's."""
    grids = GRIDS.get(optimizer, GRIDS["sgd"])
    return grids[min(grids, key=lambda g: (abs(math.log2(max(g, 1)) - math.log2(max(k, 1))), g))]


def next_lr(arm: Arm) -> Optional[float]:
    """The lr to add when the arm's chosen lr is at its grid's edge (or every lr diverged), else None."""
    tried = sorted(arm["lrs"])
    if arm["best"] is None or arm["best"] == tried[0]:
        return tried[0] / 2
    if arm["best"] == tried[-1]:
        return tried[-1] * 2
    return None


def close_pairs(arms: Sequence[Arm], wider: bool = True) -> List[Tuple[Arm, Arm]]:
    """(baseline, MLET) arms whose tuned test AUCs are within two standard errors: each MLET arm against
    the baseline of its d and (``wider``) against every wider baseline."""
    out = []
    for m in arms:
        for b in arms:
            if not m["k"] or b["k"] or b["d"] < m["d"] or (b["d"] > m["d"] and not wider) \
                    or not tuned(m) or not tuned(b):
                continue
            ms, bs = cast(Stats, tuned(m)), cast(Stats, tuned(b))  # neither is None: both checked above
            se = pays.se_of_difference(ms, bs)
            if abs(ms["auc"] - bs["auc"]) < 2 * se or se == 0:
                out.append((b, m))
    return out


def tune(sweep: Callable[[List[Run]], object], rows_of: Callable[[], Iterable[Row]], plan: Iterable[Tuple[int, int]],
         seeds: Sequence[int], grid_of: Callable[[int], Iterable[float]], extra_seeds: Iterable[int] = (),
         max_extensions: int = MAX_EXTENSIONS, wider: bool = True,
         rivals: Callable[[], Iterable[Row]] = list) -> List[Arm]:
    """Train ``plan``'s arms ``(d, k)`` tuned: ``sweep(runs)`` trains ``(d, k, lr, seed)`` runs (skipping
    finished ones), ``rows_of()`` returns this tuning's rows so far, ``grid_of(k)`` an arm's first lrs;
    ``wider``: see ``close_pairs``; ``rivals()``: rows of arms trained otherwise (another configuration)
    that this tuning's arms are also compared with for the extra seeds (only this tuning's arms get
    them here). Returns the arms (``report.summarize``)."""
    plan = list(plan)
    grids = {arm: tuple(grid_of(arm[1])) for arm in plan}
    sweep([(d, k, lr, s) for s in seeds for (d, k) in plan for lr in grids[d, k]])

    def arms() -> List[Arm]:
        return [a for a in summarize(rows_of()) if (a["d"], a["k"]) in grids]

    while True:
        more = [(a["d"], a["k"], lr, s) for a in arms()
                if len(a["lrs"]) < len(grids[a["d"], a["k"]]) + max_extensions and (lr := next_lr(a)) is not None
                for s in seeds]
        if not more:
            break
        sweep(more)
    for seed in extra_seeds:
        own = arms()
        mine = {id(a) for a in own}
        close = {(a["d"], a["k"], a["best"], seed) for pair in close_pairs(own + summarize(rivals()), wider)
                 for a in pair if id(a) in mine}
        if not close:
            break
        sweep(sorted(close))
    return arms()
