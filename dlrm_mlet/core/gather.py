"""Streaming one tensor from the rank that holds it to rank 0, in row blocks.

Both distributed saves (DLRM's model-parallel tables, TorchRec's shards) end
with rank 0 holding whole folded tables that other ranks computed. Sending a
table in one message would make rank 0 hold a second full copy in flight;
sending it in row blocks of at most ``FOLD_BLOCK_BYTES`` bounds that scratch to
one block, whatever the table size.
"""

import math
from typing import Optional, Sequence, cast

import torch
import torch.distributed as dist

from .folding import FOLD_BLOCK_BYTES


def comm_device() -> torch.device:
    """Where the blocks travel: NCCL moves CUDA tensors only; gloo (and
    ``cpu:gloo,cuda:nccl``) takes CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rows_per_block(shape: Sequence[int], dtype: torch.dtype, block_bytes: int = FOLD_BLOCK_BYTES) -> int:
    """Rows of a ``shape`` tensor (rows first) that fit in ``block_bytes``; at least one."""
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    return max(1, block_bytes // max(row_bytes, 1))


def stream_to_rank0(tensor: Optional[torch.Tensor], owner: int, out: Optional[torch.Tensor], *, add: bool = False,
                    device: Optional[torch.device] = None,
                    block_bytes: int = FOLD_BLOCK_BYTES) -> Optional[torch.Tensor]:
    """Move ``tensor`` from rank ``owner`` into ``out`` on rank 0, block by block.

    Called by ``owner`` (with ``tensor``) and by rank 0 (with ``out``: where the
    rows land, any CPU view of ``tensor``'s shape and dtype); other ranks may
    call it too and return at once. With ``add`` the rows are added into
    ``out`` rather than written, so shards that each hold a partial product (a
    column shard's share of ``A @ B.T``) sum in place; adding into zeros is exact.
    Both sides derive the block size from the shape and dtype, so no sizes travel.
    Returns ``out`` on rank 0, None elsewhere.
    """
    rank = dist.get_rank()
    if rank not in (0, owner):
        return None
    # Each branch below reads only what its rank was given: ``tensor`` on the owner, ``out`` on rank 0.
    tensor, out = cast(torch.Tensor, tensor), cast(torch.Tensor, out)
    if owner == 0:
        block = tensor.detach().to("cpu")
        return out.add_(block) if add else out.copy_(block)
    device = device or comm_device()
    if rank == owner:
        step = rows_per_block(tensor.shape, tensor.dtype, block_bytes)
        for start in range(0, tensor.shape[0], step):
            dist.send(tensor[start:start + step].detach().contiguous().to(device), dst=0)
        return None
    step = rows_per_block(out.shape, out.dtype, block_bytes)
    for start in range(0, out.shape[0], step):
        stop = min(out.shape[0], start + step)
        block = torch.empty((stop - start, *out.shape[1:]), dtype=out.dtype, device=device)
        dist.recv(block, src=owner)
        if add:
            out[start:stop] += block.cpu()
        else:
            out[start:stop].copy_(block)
    return out
