"""Saving an MLET model trained in DLRM's distributed mode as one stock checkpoint.

In ``torchrun ... dlrm_s_pytorch.py`` each rank holds only its own tables
(model parallel) and a DDP copy of the MLPs. Stock DLRM then has every rank
``torch.save`` its local state dict to the same ``--save-model`` path: the
last writer wins and the other ranks' tables are lost. Our save path instead:

* each rank writes its own unfolded shard (``PATH.mlet`` from rank 0,
  ``PATH.mlet.rank<r>`` from the others), to resume with as many ranks;
* every rank folds its own tables and streams them to rank 0 in row blocks
  (``core/gather.py``, the stream TorchRec's fold uses too);
  rank 0 writes one folded checkpoint with global table numbering and
  single-process keys, which a single-process stock DLRM loads. Rank 0 never
  holds more than the folded tables (and their optimizer state) plus one
  block of at most ``FOLD_BLOCK_BYTES``.
"""

from collections import OrderedDict
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..core.bag import MLETEmbeddingBag
from ..core.folding import fold_weight
from ..core.gather import comm_device, stream_to_rank0
from ..core.step import ParamState
from ..errors import MLETError
from ..checkpoint_io import to_plain
from .checkpoints import Checkpoint, OptimizerState, fold_param_state, optimizer_group_names


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_path(mlet_path: str, rank: int) -> str:
    """Rank 0's shard is ``PATH.mlet`` itself, so ``--load-model=PATH.mlet`` names them all."""
    return mlet_path if rank == 0 else f"{mlet_path}.rank{rank}"


def optimizer_groups(model: nn.Module) -> List[List[nn.Parameter]]:
    """The parameters behind DLRM's three distributed optimizer groups, in order (``optimizer_group_names``)."""
    params = dict(model.named_parameters())
    return [[params[name] for name in names] for names in optimizer_group_names(params, 3)]


def state_by_param(model: nn.Module, opt_state: OptimizerState) -> Dict[int, ParamState]:
    """A distributed optimizer state's per-parameter entries, keyed by ``id`` of the model's parameter."""
    by_param = {}
    for group, params in zip(opt_state["param_groups"], optimizer_groups(model)):
        for index, param in zip(group["params"], params):
            if index in opt_state["state"]:
                by_param[id(param)] = opt_state["state"][index]
    return by_param


def _owners(model):
    """Global table index -> (owner rank, local index): DLRM's ``get_my_slice`` split."""
    size = dist.get_world_size()
    per_rank, extra = divmod(model.n_global_emb, size)
    owners = []
    for rank in range(size):
        owners += [(rank, local) for local in range(per_rank + (rank < extra))]
    return owners


def _payload(model, local, by_param):
    """What rank 0 needs of one local table: tensors (row-major) and small values."""
    table = model.emb_l[local]
    if isinstance(table, MLETEmbeddingBag):
        weight = fold_weight(table.table.weight, table.proj.weight, f"emb_l.{local}")
        state = fold_param_state(by_param.get(id(table.table.weight), {}), table.proj.weight)
    else:
        weight, state = table.weight.detach(), dict(by_param.get(id(table.weight), {}))
    tensors = {"weight": weight}
    scalars = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0:
            tensors[f"opt.{key}"] = value
        else:
            scalars[key] = value
    if isinstance(getattr(model, "v_W_l", None), torch.nn.ParameterList):
        tensors["v_W"] = model.v_W_l[local].detach()
    return tensors, scalars


def _gather_table(model, owner, local, by_param, device):
    """One global table from its owner to rank 0 (None elsewhere); errors travel too."""
    rank = dist.get_rank()
    if rank not in (0, owner):
        return None
    tensors, header = {}, [None]
    if rank == owner:
        try:
            tensors, scalars = _payload(model, local, by_param)
            header = [{"tensors": [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()],
                       "scalars": to_plain(scalars), "error": None}]
        except MLETError as error:
            header = [{"tensors": [], "scalars": {}, "error": str(error)}]
        if owner == 0:
            return header[0] | {"data": {k: v.cpu() for k, v in tensors.items()}}
        dist.send_object_list(header, dst=0)
        for key in tensors:
            stream_to_rank0(tensors[key], owner, None, device=device)
        return None
    dist.recv_object_list(header, src=owner)
    data = {key: stream_to_rank0(None, owner, torch.empty(shape, dtype=dtype), device=device)
            for key, shape, dtype in header[0]["tensors"]}
    return header[0] | {"data": data}


def gather_folded_checkpoint(ckpt: Checkpoint, model: nn.Module) -> Optional[Checkpoint]:
    """Collective: rank 0 returns the stock single-process checkpoint, others None.

    Raises MLETError on every rank when any table cannot be folded.
    """
    rank = dist.get_rank()
    device = comm_device()
    opt_state = ckpt.get("opt_state_dict")
    by_param = state_by_param(model, opt_state) if opt_state is not None else {}
    tables = [_gather_table(model, owner, local, by_param, device) for owner, local in _owners(model)]
    error = [next((t["error"] for t in tables if t and t["error"]), None)]
    dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise MLETError(error[0])
    return _assemble(ckpt, model, tables) if rank == 0 else None


def _assemble(ckpt, model, tables):
    """Stock keys in stock order: tables, pooling weights, bottom MLP, top MLP."""
    state_dict = OrderedDict((f"emb_l.{g}.weight", t["data"]["weight"]) for g, t in enumerate(tables))
    for g, t in enumerate(tables):
        if "v_W" in t["data"]:
            state_dict[f"v_W_l.{g}"] = t["data"]["v_W"]
    for name, value in ckpt["state_dict"].items():
        if name.startswith(("bot_l.", "top_l.")):
            state_dict[name.replace(".module.", ".", 1)] = value
    folded = {key: to_plain(value) for key, value in ckpt.items()
              if key not in ("state_dict", "opt_state_dict", "mlet")}
    folded["state_dict"] = state_dict
    opt_state = ckpt.get("opt_state_dict")
    if opt_state is not None:
        folded["opt_state_dict"] = _stock_optimizer_state(opt_state, model, tables, state_dict)
    return {key: folded[key] for key in ckpt if key in folded}


def _stock_optimizer_state(opt_state, model, tables, state_dict):
    """One group over ``parameters()`` in stock order, as single-process DLRM builds it."""
    index = {name: i for i, name in enumerate(state_dict)}
    state = {}
    for g, t in enumerate(tables):
        table_state = dict(t["scalars"])
        table_state.update({k[4:]: v for k, v in t["data"].items() if k.startswith("opt.")})
        if table_state:
            state[index[f"emb_l.{g}.weight"]] = table_state
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group, params in list(zip(opt_state["param_groups"], optimizer_groups(model)))[1:]:
        for old, param in zip(group["params"], params):
            if old in opt_state["state"]:
                stock = by_id[id(param)].replace(".module.", ".", 1)
                state[index[stock]] = to_plain(opt_state["state"][old])
    hyper = {k: v for k, v in opt_state["param_groups"][0].items() if k != "params"}
    return {"state": state, "param_groups": [dict(to_plain(hyper), params=list(range(len(state_dict))))]}
