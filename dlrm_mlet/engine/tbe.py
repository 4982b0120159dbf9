"""fbgemm's table-batched embedding for MLET's k-wide tables (``--mlet-fused-update=fbgemm``).

TorchRec trains embeddings with fbgemm's TBE: all tables in one buffer,
pooled by one kernel, and SGD applied inside its backward with repeated rows
summed first ("exact SGD"). It is offered for hosts where those kernels beat
ours; it is not the default because where it was measured it did not
(``benchmarks/embedding_update.py``, figures in ``benchmarks/RESULTS.md``).

DLRM's contract is kept: each ``MLETEmbeddingBag.table.weight`` stays the
same Parameter object, with the same name and shape, its data now a view into
the TBE's buffer. The optimizer, checkpoints, ``load_state_dict``, folding
and the monitor all read and write the numbers the TBE trains. The TBE is not
a submodule, so state-dict keys do not change.

The update waits for the optimizer's step (``core/step.py``): only then is the
learning rate of the group holding the tables known for sure, DLRM's
scheduler included, and only an optimizer step may change the weights, as
without the option. fbgemm fixes a step's learning rate when its forward
runs, so the TBE keeps lr 1 and the gradient it is handed is already scaled
by the optimizer's lr: the k-wide rows are projected back at step time with
the lr folded into that matmul. Requires ``fbgemm-gpu-cpu`` (the
``[torchrec]`` extra); CPU only. All tables of one TBE take the lr of the
optimizer group that holds the first of them (DLRM puts them in one group).
"""

from typing import Any, List, Optional, Sequence, Tuple, cast

import torch

from ..errors import MLETError
from ..core import step
from ..core.bag import MLETEmbeddingBag
from . import fused, packing


def available() -> Optional[str]:
    """None when fbgemm's CPU TBE imports, else why not (one line)."""
    try:
        import fbgemm_gpu.split_table_batched_embeddings_ops_training  # noqa: F401
    except Exception as error:  # ImportError, or a build that fails to load its library
        return f"fbgemm_gpu does not import ({type(error).__name__}: {error}); install fbgemm-gpu-cpu " \
               "(pip install fbgemm-gpu-cpu==1.8.0 beside torch 2.13)"
    return None


class TBEGroup:
    """One TBE holding the k-wide rows of several MLET tables."""

    def __init__(self, tables: Sequence[MLETEmbeddingBag]) -> None:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            BoundsCheckMode,
            ComputeDevice,
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        self.tables = list(tables)
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(t.num_embeddings, t.hidden_dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for t in self.tables],
            optimizer=EmbOptimType.EXACT_SGD, learning_rate=1.0,  # the real lr scales the gradient
            pooling_mode=PoolingMode.MEAN if self.tables[0].mode == "mean" else PoolingMode.SUM,
            bounds_check_mode=BoundsCheckMode.FATAL,  # an index out of range is an error, as in nn.EmbeddingBag
            # Unwritten memory, filled table by table below as each old table is freed:
            # the k-wide rows never exist twice (a zeroed buffer would double the peak).
            preallocated_host_buffers={"weights": torch.empty(sum(t.table.weight.numel() for t in self.tables))},
        )
        with torch.no_grad():
            for t, view in zip(self.tables, self.tbe.split_embedding_weights()):
                view.copy_(t.table.weight)
                t.table.weight.data = view  # same Parameter object: the optimizer keeps holding it
        self.pointers = [t.table.weight.data_ptr() for t in self.tables]
        # Reused every step: a fresh multi-MiB buffer each step pays its page faults
        # again, for a buffer whose size never changes.
        self.scratch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def holds(self, tables: Sequence[MLETEmbeddingBag]) -> bool:
        """Whether these tables still train in this TBE (nobody replaced a weight since)."""
        return (len(tables) == len(self.tables) and all(a is b for a, b in zip(tables, self.tables))
                and all(t.table.weight.data_ptr() == p for t, p in zip(tables, self.pointers)))

    def update(self, pooled: torch.Tensor, grad_out: torch.Tensor, proj: torch.Tensor, lr: float) -> None:
        """The SGD step at the optimizer group's lr: fbgemm's fused backward of ``lr * grad``."""
        count, bags, k = grad_out.shape[0], grad_out.shape[1], proj.shape[2]
        if self.scratch is None or self.scratch[0].shape != (count, bags, k):
            self.scratch = (torch.empty(count, bags, k), torch.empty(bags, count, k))
        table_major, bag_major = self.scratch
        torch.baddbmm(table_major, grad_out, proj, beta=0, alpha=lr, out=table_major)
        bag_major.copy_(table_major.transpose(0, 1))  # TBE's layout
        with torch.enable_grad():
            pooled.backward(bag_major.view(pooled.shape))


def group_for(tables: Sequence[MLETEmbeddingBag]) -> TBEGroup:
    """The TBE of these tables, made on first use (the tables' weights move into it)."""
    group = tables[0]._tbe_group
    if group is None or not group.holds(tables):
        why = available()
        if why:
            raise MLETError(f"--mlet-fused-update=fbgemm: {why}")
        if any(t.table.weight.device.type != "cpu" or t.table.weight.dtype != torch.float32 for t in tables):
            raise MLETError("--mlet-fused-update=fbgemm trains float32 tables on the CPU only")
        group = TBEGroup(tables)
        for t in tables:
            t._tbe_group = group  # a plain attribute, not a submodule: state-dict keys stay DLRM's
    return group


class Grouped(torch.autograd.Function):
    """``_Grouped`` (grouped.py) with fbgemm doing the pooling and the table update."""

    @staticmethod
    def forward(ctx: Any, group: TBEGroup, indices: List[torch.Tensor], offsets: List[torch.Tensor],
                weights: List[Optional[torch.Tensor]], *projs: torch.Tensor) -> torch.Tensor:
        count, bags, k = len(indices), offsets[0].numel(), group.tables[0].hidden_dim
        starts, base = [], 0
        for i, o in zip(indices, offsets):  # TBE takes all tables' bags as one list
            starts.append(o + base)
            base += i.numel()
        all_offsets = torch.cat(starts + [offsets[0].new_tensor([base])])
        psw = None if weights[0] is None else torch.cat(cast(List[torch.Tensor], weights))  # all None or all tensors
        with torch.enable_grad():
            pooled = group.tbe(torch.cat(indices), all_offsets, per_sample_weights=psw)  # (bags, count * k)
        stacked = pooled.detach().view(bags, count, k).transpose(0, 1)  # table-major, for bmm
        proj = torch.stack(projs)
        out = packing.project(stacked, proj)
        ctx.group, ctx.pooled = group, pooled
        ctx.save_for_backward(stacked, proj)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        stacked, proj = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_proj = packing.projection_grad(grad_out, stacked).unbind(0)
        group, pooled = ctx.group, ctx.pooled

        def apply(optimizer, param_group, payloads):
            fused.check_plain_sgd(optimizer, param_group)
            group.update(pooled, grad_out, proj, param_group["lr"])
        step.defer(group.tables[0].table.weight, apply, rows=stacked.shape[0] * stacked.shape[1])
        ctx.pooled = None
        return (None, None, None, None, *grad_proj)
