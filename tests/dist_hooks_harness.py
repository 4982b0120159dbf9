"""Run patched DLRM's run() under torchrun, with test hooks chosen by environment variables.

Used by test_divergence.py and test_resume.py:
``torchrun --nproc_per_node=2 dist_hooks_harness.py DLRM_DIR -- ARGS``.

* ``POISON=RANK:KEY:ROW``: on rank RANK, just before each save, row ROW of the
  local parameter KEY becomes NaN (what a diverged table looks like; injected
  because a real divergence makes DLRM's test accuracy 0, and DLRM never saves then).
* ``STOP_AFTER_SAVE=EPOCH:ITER``: every rank exits (code 3) right after the save
  at that point, as a job killed after its checkpoint.
* ``STATE_OUT=PATH``: when training ends, each rank writes its local state dict
  to ``PATH.rank<r>``.
"""

import os
import sys

import torch

from conftest import import_script, leave_group_and_exit
from dlrm_mlet import dlrm_glue

dlrm_dir = sys.argv[1]
sys.argv = ["dlrm_s_pytorch.py"] + sys.argv[sys.argv.index("--") + 1:]
rank = int(os.environ["RANK"])
save = dlrm_glue.save_model


def hooked_save(ckpt, path, model):
    if os.environ.get("POISON"):
        on, key, row = os.environ["POISON"].split(":")
        if int(on) == rank:
            with torch.no_grad():
                dict(model.named_parameters())[key][int(row)] = float("nan")
    save(ckpt, path, model)
    if os.environ.get("STOP_AFTER_SAVE") == f"{ckpt['epoch']}:{ckpt['iter']}":
        sys.exit(3)


dlrm_glue.save_model = hooked_save
script = import_script(dlrm_dir, "dlrm_s_pytorch")
script.run()
if os.environ.get("STATE_OUT"):
    torch.save(script.dlrm.state_dict(), f"{os.environ['STATE_OUT']}.rank{rank}")
leave_group_and_exit(script)
