"""``--mlet-table-lr-scale`` and ``--mlet-proj-lr-scale``: the tables and the projections in optimizer groups of their own.

MLET's projection multiplies the step an embedding row takes (about k/16
times with SGD, ``docs/results.md``), so "is MLET more than a larger table
step?" is a fair question, and the baseline must be able to take that larger
step: ``--mlet-table-lr-scale S`` trains the lookup tables (stock or MLET) at
S times ``--learning-rate``. ``--mlet-proj-lr-scale 0`` keeps MLET's
projections at their initial values, to ask whether training them matters.

DLRM builds its optimizer over ``dlrm.parameters()`` (one group; three in
distributed mode); the patch hands that to ``param_groups``, which returns it
untouched unless a scale is given, so stock runs keep stock's optimizer byte
for byte. DLRM's scheduler scales every group's own lr, so the ratio holds
through warm-up and decay, and the update at the step reads each group's lr.
"""

from typing import List, cast

from torch import nn
from torch.optim.optimizer import ParamsT

from ..core.pair import is_mlet
from ..core.step import ParamGroup
from .session import session


def _split(model):
    """Ids of the lookup tables' parameters and of the MLET projections' (MD's own projections are neither)."""
    projections = {id(m.proj.weight) for m in model.emb_l.modules() if is_mlet(m)}
    tables = {id(p) for m in model.emb_l.modules() if not isinstance(m, nn.Linear)
              for p in m.parameters(recurse=False)} - projections
    return tables, projections


def param_groups(model: nn.Module, parameters: ParamsT, lr: float) -> ParamsT:
    """DLRM's ``parameters`` (an iterable of tensors, or of group dicts) with the tables and projections
    in groups of their own at their scaled lr; ``parameters`` itself when no scale is given."""
    config = session.config
    session.group_names = None
    if config.table_lr_scale == 1.0 and config.proj_lr_scale == 1.0:
        return parameters
    tables, projections = _split(model)
    names = {id(p): name for name, p in model.named_parameters()}
    given = list(parameters)
    if given and isinstance(given[0], dict):  # DLRM's distributed groups: tables, bottom MLP, top MLP
        groups = [dict(g, params=list(g["params"])) for g in cast(List[ParamGroup], given)]
    else:
        groups = [{"params": given}]
    out = []
    for group in groups:
        base = group.get("lr", lr)
        parts = (
            (lambda p: id(p) in tables, base * config.table_lr_scale),
            (lambda p: id(p) in projections, base * config.proj_lr_scale),
            (lambda p: id(p) not in tables and id(p) not in projections, base),
        )
        for belongs, part_lr in parts:
            params = [p for p in group["params"] if belongs(p)]
            if params:
                out.append(dict(group, params=params, lr=part_lr))
    session.group_names = [[names[id(p)] for p in group["params"]] for group in out]
    scales = ", ".join(f"{what} x{scale:g}" for what, scale in (("tables", config.table_lr_scale),
                                                                  ("projections", config.proj_lr_scale))
                       if scale != 1.0)
    print(f"MLET: learning rates {scales} (their own optimizer groups)", flush=True)
    return out
