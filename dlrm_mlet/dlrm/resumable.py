"""``--mlet-checkpoint``: a run that keeps a resumable checkpoint of itself, and picks it up when started again.

DLRM writes ``--save-model`` only after a test, and only when the test
accuracy improved; a run stopped between tests (jobs are stopped every few
hours on shared machines) loses everything since. With ``--mlet-checkpoint
PATH`` the training loop's state goes to PATH every ``--mlet-checkpoint-every``
batches and at the end of each epoch, atomically; a run started with PATH
there loads it through DLRM's own ``--load-model`` path and continues exactly
(``resume.py``'s fixes hold for it, MLET or not), so one command, run again
until it finishes, trains the model it would have trained uninterrupted.
"""

import argparse
import os
from typing import Any, Dict

from torch import nn

from ..errors import MLETError
from ..files import check_writable
from .saving import save_training_checkpoint
from .session import fail, session


def check(args: argparse.Namespace) -> None:
    """Before any work: PATH can be written, is not ``--save-model``'s; a PATH there becomes ``--load-model``."""
    path = session.config.checkpoint
    if not path:
        return
    if os.path.abspath(path) == os.path.abspath(getattr(args, "save_model", "") or os.devnull):
        fail("--mlet-checkpoint: give it another file than --save-model (that one holds the best tested model)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail("--mlet-checkpoint keeps a single-process run; in DLRM's distributed mode use --save-model")
    try:
        check_writable(path)
    except MLETError as error:
        fail(f"--mlet-checkpoint: {error}")
    if os.path.exists(path):
        if getattr(args, "load_model", ""):
            fail(f"--mlet-checkpoint={path} exists and resumes the run by itself; drop --load-model, or remove "
                 f"{path} to start from --load-model")
        args.load_model = path
        print(f"MLET: resuming from {path}", flush=True)


def checkpoint(model: nn.Module, args: argparse.Namespace, state: Dict[str, Any]) -> None:
    """At the end of each batch of DLRM's training loop (``state``: its local variables, read by
    name): write the run's checkpoint when one is due."""
    config = session.config
    if not config.checkpoint:
        return
    j, k = state["j"], state["k"]
    nbatches = args.num_batches if args.num_batches > 0 else len(state["train_ld"])
    every = config.checkpoint_every
    if not (j + 1 == nbatches or every and (j + 1) % every == 0):
        return
    ckpt = {
        "nepochs": args.nepochs, "nbatches": nbatches, "nbatches_test": len(state["test_ld"]),
        "state_dict": model.state_dict(), "test_acc": state["best_acc_test"],
        "test_auc": state["best_auc_test"], "epoch": k, "iter": j + 1,
        # a due checkpoint follows a print (its batch is a multiple of --print-freq, or the last), which set these
        "train_loss": state["train_loss"], "total_loss": state["total_loss"],
        "opt_state_dict": state["optimizer"].state_dict(),
    }
    save_training_checkpoint(ckpt, config.checkpoint, model)
