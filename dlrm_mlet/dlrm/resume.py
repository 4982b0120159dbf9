"""Resuming MLET training where it stopped: the fixes DLRM's resume path needs.

A resumed stock DLRM run does not continue the interrupted one: it loops
forever after a finished epoch, skips batches in every epoch, restarts its
learning-rate schedule and RWSAdagrad's accumulators, and draws other random
data. Each function here fixes one of those for resumed MLET runs and for
runs that keep ``--mlet-checkpoint`` (``session.resumes_exactly``); any other
run keeps stock behaviour, byte for byte.
"""

import warnings
from typing import Any, Dict, Mapping, Tuple, cast

import numpy as np
import torch

from ..core import step
from .checkpoints import Checkpoint
from .session import resumes_exactly, session


def epoch_after_skip(k: int) -> int:
    """Stock DLRM skips a finished epoch with ``continue`` but never advances ``k``.

    A checkpoint saved after the first epoch therefore makes a resumed run
    loop forever. When resuming exactly (MLET training, or ``--mlet-checkpoint``)
    we advance; otherwise the stock behaviour is kept, byte for byte.
    """
    return k + 1 if resumes_exactly() else k


def skip_batch(k: int, j: int, skip_upto_epoch: int, skip_upto_batch: int) -> bool:
    """Whether to skip batch ``j`` of epoch ``k`` when resuming.

    Stock DLRM skips the first ``skip_upto_batch`` batches of *every* epoch, so
    a resumed multi-epoch run silently trains on less data. Resuming exactly
    skips them in the saved epoch only, and after the last skipped
    batch puts back the numpy RNG state saved with the checkpoint, so the next
    batch is drawn as in the uninterrupted run (see ``numpy_rng_state``).
    """
    if resumes_exactly():
        skip = k == skip_upto_epoch and j < skip_upto_batch
        if skip and j == skip_upto_batch - 1 and session.resume_rng is not None:
            set_numpy_rng_state(session.resume_rng)
            session.resume_rng = None
        return skip
    return j < skip_upto_batch


def resume_schedule(lr_scheduler: torch.optim.lr_scheduler.LRScheduler, ckpt: Checkpoint) -> None:
    """Move DLRM's learning-rate scheduler to the step the resumed checkpoint was saved at.

    DLRM does not save its scheduler, so a resumed run would restart warm-up and
    decay from step 0 (the MLPerf schedule warms up over thousands of steps).
    Here it is stepped once per optimizer step the saved run took, as the
    uninterrupted run stepped it, so every later step gets the same rate.
    Exact resumes only (stock kept as is).
    """
    if not resumes_exactly():
        return
    grad_accum = session.config.grad_accum
    per_epoch = ckpt["nbatches"] // grad_accum
    steps = ckpt["epoch"] * per_epoch + ckpt["iter"] // grad_accum
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "lr_scheduler.step() before optimizer.step()"
        for _ in range(steps):
            lr_scheduler.step()


def start_resume(ckpt: Checkpoint) -> None:
    """A checkpoint is resuming training exactly: hold its RNG state, keep RWSAdagrad's accumulators."""
    session.resume_rng = ckpt.get("mlet", {}).get("numpy_rng")
    step.on_step("keep a resumed RWSAdagrad's accumulators", _keep_loaded_rowwise_state)


def numpy_rng_state() -> Dict[str, Any]:
    """numpy's global RNG state as plain values, saved in ``PATH.mlet``.

    DLRM's random data draws each batch from the global numpy RNG, reseeding
    only at batch 0, and its test loader does the same: after a mid-epoch test
    the next training batch comes from the state the test left. A resumed run
    regenerates the skipped batches instead, so without this state it would
    train on other data than the uninterrupted run.
    """
    # get_state()'s default, legacy form: ("MT19937", keys, pos, has_gauss, cached_gaussian)
    _, keys, pos, has_gauss, gauss = cast(Tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}


def set_numpy_rng_state(state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def _keep_loaded_rowwise_state(optimizer, args, kwargs):
    """Step pre-hook: keep the accumulators a resumed DLRM ``RWSAdagrad`` loaded.

    RWSAdagrad zeroes every ``momentum``/``sum`` on its first ``step`` because
    its ``momentum_initialized`` flag is an attribute, not optimizer state, and
    so is False again after ``load_state_dict``; a resumed run would restart
    Adagrad's accumulation from zero. Exact resumes only (stock kept as is).
    """
    # Only RWSAdagrad's own loop makes a dense parameter's "sum": with one there, the state was loaded.
    # (Row-wise "momentum" alone is no sign: the MLET tables' update at the step makes it before that loop.)
    if (resumes_exactly() and getattr(optimizer, "momentum_initialized", True) is False
            and any("sum" in s for s in optimizer.state.values())):
        optimizer.momentum_initialized = True

