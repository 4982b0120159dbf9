"""DLRM checkpoint dicts with MLET tables, and their folded stock equivalents.

A DLRM checkpoint is the dict ``dlrm_s_pytorch.py`` saves: ``state_dict``,
``opt_state_dict`` and bookkeeping (``nepochs``, ``iter``, ``test_acc``, ...).
"""

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from ..core.folding import PROJ_KEY, TABLE_KEY, fold_state_dict, key_prefix, mlet_prefixes
from ..core.half import float32_state
from ..core.step import ParamState
from ..errors import MLETError
from ..checkpoint_io import Checkpoint, to_plain

MLET_SUFFIX = ".mlet"

OptimizerState = Dict[str, Any]  # an optimizer's state_dict(): "state" (index -> ParamState), "param_groups"
GroupNames = List[List[str]]  # the parameter names behind an optimizer's indices, group by group


def is_mlet_checkpoint(ckpt: Checkpoint) -> bool:
    return bool(mlet_prefixes(ckpt["state_dict"]))


# DLRM's distributed optimizer groups, by the module holding the parameter.
_DISTRIBUTED_GROUPS = ("emb_l.", "bot_l.", "top_l.")


def optimizer_group_names(names: Iterable[str], groups: int) -> GroupNames:
    """Which of DLRM's optimizer groups each parameter is in: ``names`` split, in order.

    The one statement of DLRM's layout (``run()``, where it builds the
    optimizer): a single process has one group over ``parameters()``;
    distributed mode (``groups`` 3) has the tables' parameters, then the bottom
    MLP's, then the top MLP's (pooling weights are in none). ``names`` are
    parameter names in registration order (``named_parameters()``, or a state
    dict's keys: DLRM registers no buffers).
    """
    names = list(names)
    if groups == 1:
        return [names]
    return [[name for name in names if name.startswith(prefix)] for prefix in _DISTRIBUTED_GROUPS]


def param_group_names(model: nn.Module, opt_state: OptimizerState) -> GroupNames:
    """Parameter names behind the optimizer's indices, group by group (recorded in ``PATH.mlet``)."""
    return optimizer_group_names((name for name, _ in model.named_parameters()), len(opt_state["param_groups"]))


def param_groups_by_name(ckpt: Checkpoint) -> GroupNames:
    """Names of the parameters behind each optimizer group's indices.

    Our ``.mlet`` files record them. For other files, assume DLRM's
    single-process layout.
    """
    recorded = ckpt.get("mlet", {}).get("param_groups")
    if recorded is not None:
        return [list(names) for names in recorded]
    return optimizer_group_names(ckpt["state_dict"].keys(), 1)


def fold_checkpoint(ckpt: Checkpoint, progress: Optional[Callable[[int], object]] = None) -> Checkpoint:
    """Return the stock DLRM checkpoint equivalent to an MLET one.

    ``state_dict`` is folded, ``opt_state_dict`` renumbered for the folded
    parameter list (see ``fold_optimizer_state``), numpy scalars become
    Python numbers and our ``mlet`` record is dropped, leaving exactly the keys
    stock DLRM writes.
    """
    state_dict = ckpt["state_dict"]
    if not mlet_prefixes(state_dict):
        raise MLETError("the checkpoint has no MLET tables (is it already folded?)")
    folded = {key: to_plain(value) for key, value in ckpt.items() if key not in ("mlet", "state_dict")}
    folded["state_dict"] = fold_state_dict(state_dict, progress)
    if ckpt.get("opt_state_dict") is not None:
        folded["opt_state_dict"] = fold_optimizer_state(
            ckpt["opt_state_dict"], param_groups_by_name(ckpt), state_dict
        )
    return {key: folded[key] for key in ckpt if key in folded}


def fold_optimizer_state(opt_state: OptimizerState, group_names: GroupNames,
                         state_dict: Mapping[str, torch.Tensor]) -> OptimizerState:
    """Renumber an optimizer state dict for the folded parameter list.

    Each table's ``table.weight`` becomes the folded ``weight`` in its place
    and its ``proj.weight`` disappears, so later indices shift down. The
    optimizer's per-parameter state of other parameters is carried over as is.
    For a folded table only an estimate exists: Adagrad's ``sum`` and
    RWSAdagrad's row ``momentum`` are accumulated squared gradients, and if
    gradient components are roughly isotropic, a folded row's per-component
    accumulator is the MLET row's accumulator total divided by
    ``||proj||_F^2``. Rows never updated stay exactly zero. SGD momentum cannot
    be mapped and restarts from zero.
    """
    groups = opt_state["param_groups"]
    counts = [len(group["params"]) for group in groups]
    if counts != [len(names) for names in group_names]:
        raise MLETError(
            f"optimizer state has {counts} parameters per group but the model has "
            f"{[len(names) for names in group_names]}; cannot renumber it for the folded model"
        )
    prefixes = set(mlet_prefixes(state_dict))
    new_state, new_groups, index = {}, [], 0
    for group, names in zip(groups, group_names):
        new_ids = []
        for old_id, name in zip(group["params"], names):
            if key_prefix(name, PROJ_KEY) in prefixes:
                continue
            state = opt_state["state"].get(old_id)
            table = key_prefix(name, TABLE_KEY)
            if table in prefixes and state is not None:
                state = fold_param_state(state, state_dict[table + PROJ_KEY])
            if state is not None:
                new_state[index] = to_plain(state)
            new_ids.append(index)
            index += 1
        new_groups.append({**to_plain({k: v for k, v in group.items() if k != "params"}), "params": new_ids})
    return {"state": new_state, "param_groups": new_groups}


def fold_param_state(state: ParamState, proj_weight: torch.Tensor) -> ParamState:
    """Estimate the optimizer state of a folded table (see fold_optimizer_state).

    A half-precision table's float32 accumulators are read as the optimizer
    holds a float32 table's (``half.float32_state``).
    """
    k = proj_weight.shape[1]
    d = proj_weight.shape[0]
    scale = float(proj_weight.detach().double().pow(2).sum())
    scale = scale if scale > 0 else 1.0
    folded = {}
    for key, value in float32_state(state).items():
        if key == "sum" and torch.is_tensor(value) and value.dim() == 2:
            per_row = value.sum(dim=1, keepdim=True) / scale
            folded[key] = per_row.expand(-1, d).contiguous()
        elif key == "momentum" and torch.is_tensor(value) and value.dim() == 1:
            folded[key] = value * (k / scale)
        elif key == "step":
            folded[key] = value
        # Anything else (SGD momentum_buffer, unknown optimizers' state) has no
        # folded counterpart; the optimizer re-creates it from zero.
    return folded
