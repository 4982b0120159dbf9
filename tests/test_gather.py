"""The one streamed gather to rank 0 (core/gather.py), on 2 gloo processes.

DLRM's distributed save and TorchRec's fold both send folded rows with it;
here tiny blocks force many messages per tensor, into views, written and added.
"""

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dlrm_mlet.core.gather import rows_per_block, stream_to_rank0
from conftest import leave_gloo  # noqa: E402

BLOCK_BYTES = 40  # 3 float32 rows of width 3 per message


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(37, 3, generator=g), torch.randn(11, generator=g), torch.randn(5, 2, 3, generator=g)


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    rows, vector, cube = _data()
    mine = rank == 1
    table = torch.zeros(40, 8) if rank == 0 else None
    place = table[2:39, 4:7] if rank == 0 else None  # a non-contiguous view
    got = [stream_to_rank0(rows if mine else None, 1, place, add=True, block_bytes=BLOCK_BYTES)]
    stream_to_rank0(rows if mine else None, 1, place, add=True, block_bytes=BLOCK_BYTES)  # adds again
    stream_to_rank0(rows if rank == 0 else None, 0, place, add=True, block_bytes=BLOCK_BYTES)  # local
    got.append(stream_to_rank0(vector if mine else None, 1, torch.empty(11) if rank == 0 else None,
                               block_bytes=BLOCK_BYTES))
    got.append(stream_to_rank0(cube if mine else None, 1, torch.empty(5, 2, 3) if rank == 0 else None,
                               block_bytes=BLOCK_BYTES))
    if rank == 0:
        assert got[0] is place
        torch.save({"table": table, "vector": got[1], "cube": got[2]}, out)
    else:
        assert got == [None, None, None]
    leave_gloo()


def test_rows_per_block_bounds_each_message():
    assert rows_per_block((37, 3), torch.float32, BLOCK_BYTES) == 3
    assert rows_per_block((11,), torch.float32, BLOCK_BYTES) == 10
    assert rows_per_block((5, 2, 3), torch.float64, BLOCK_BYTES) == 1  # never 0 rows


def test_stream_to_rank0_writes_and_adds_in_place(tmp_path):
    out = str(tmp_path / "got.pt")
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, start_method="spawn")
    got = torch.load(out)
    rows, vector, cube = _data()
    expected = torch.zeros(40, 8)
    expected[2:39, 4:7] = 3 * rows  # added into zeros three times: exact
    assert torch.equal(got["table"], expected)
    assert torch.equal(got["vector"], vector) and torch.equal(got["cube"], cube)
