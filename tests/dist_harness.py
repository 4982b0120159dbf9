"""Run patched DLRM's run() under torchrun, then dump the distributed model's predictions.

Used by test_distributed.py: ``torchrun --nproc_per_node=2 dist_harness.py DLRM_DIR OUT -- ARGS``.
After training (and saving) it predicts one fixed batch with the model as it is
spread over the ranks (model-parallel tables, all-to-all, DDP MLPs), so the
test can compare those predictions with a single-process stock DLRM that loaded
the folded checkpoint.
"""

import sys

import torch

from conftest import import_script, leave_group_and_exit

dlrm_dir, out = sys.argv[1], sys.argv[2]
sys.argv = ["dlrm_s_pytorch.py"] + sys.argv[sys.argv.index("--") + 1:]
script = import_script(dlrm_dir, "dlrm_s_pytorch")
script.run()

rows = script.args.ln_emb
g = torch.Generator().manual_seed(1)
batch = 64
dense = torch.rand(batch, 13, generator=g)
offsets = torch.stack([torch.arange(batch) * 3 for _ in rows])
indices = torch.stack([torch.randint(0, n, (3 * batch,), generator=g) for n in rows])
with torch.no_grad():
    z = script.dlrm_wrap(dense, offsets, indices, False, torch.device("cpu"))
    _, lengths = script.ext_dist.get_split_lengths(batch)
    z = script.ext_dist.all_gather(z, lengths)
if script.ext_dist.my_rank == 0:
    torch.save({"dense": dense, "offsets": offsets, "indices": indices, "pred": z}, out)
leave_group_and_exit(script)
