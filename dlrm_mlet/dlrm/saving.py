"""What ``--save-model``, ``--load-model`` and ``--save-onnx`` do with MLET tables.

The rule: a file DLRM writes is a stock DLRM checkpoint (folded), and the
unfolded training state goes beside it in ``PATH.mlet``; a file DLRM loads is
adapted to the model loading it, or refused in one line naming what differs.
The checkpoint dicts themselves (folding, optimizer renumbering) are
``checkpoints.py``'s; the distributed shards ``distributed.py``'s.
"""

import sys
import zipfile
from typing import Mapping, cast

import torch
from torch import nn

from ..core.convert import fold_model
from ..core.folding import first_non_finite, fold_state_dict
from ..core.pair import is_mlet
from ..errors import MLETError
from ..checkpoint_io import atomic_save, check_safe_to_load, load_checkpoint, to_plain
from . import distributed, onnx_serving
from .checkpoints import MLET_SUFFIX, Checkpoint, fold_checkpoint, is_mlet_checkpoint, param_group_names
from .resume import numpy_rng_state, start_resume
from .session import builds_tables, fail, resumes_exactly, session
from .tables import has_mlet_tables

FORMAT_VERSION = 1


def save_model(ckpt: Checkpoint, path: str, model: nn.Module) -> None:
    """DLRM's ``torch.save(model_metrics_dict, args.save_model)``, made safe and folded.

    Without MLET: the same bytes DLRM writes, only atomically. With it:
    ``PATH.mlet`` holds the unfolded training checkpoint (to resume MLET
    training) and ``PATH`` the folded stock checkpoint, each written
    atomically. In distributed mode see ``distributed.py``: per-rank shards,
    and one complete folded checkpoint written by rank 0.
    """
    if not builds_tables():
        try:
            atomic_save(ckpt, path)
        except MLETError as error:
            fail(f"--save-model: {error}")
        return
    training = _training_state(ckpt, model)
    bad = first_non_finite(training["state_dict"])
    try:
        # Everything is checked and folded before anything is written: a diverged
        # run must not replace the last good checkpoint (nor any rank its shard).
        if distributed.is_distributed():
            rank = distributed.dist.get_rank()
            verdicts = [None] * distributed.dist.get_world_size()
            distributed.dist.all_gather_object(verdicts, bad and (_global_name(bad[0], model), bad[1], rank))
            bad = next((v for v in verdicts if v), None)
            if bad:
                _fail_together(diverged(ckpt, path, f"{bad[0]} row {bad[1]} on rank {bad[2]}"), distributed.dist)
            folded = distributed.gather_folded_checkpoint(training, model)
            atomic_save(training, distributed.shard_path(path + MLET_SUFFIX, rank))
            if rank == 0:
                atomic_save(folded, path)
            distributed.dist.barrier()
        else:
            if bad:
                fail(diverged(ckpt, path, f"{bad[0]} row {bad[1]}"))
            folded = fold_checkpoint(training)
            atomic_save(training, path + MLET_SUFFIX)
            atomic_save(folded, path)
    except MLETError as error:
        fail(f"--save-model: {error}")
    print(f"MLET: wrote folded stock checkpoint {path} and MLET checkpoint {path}{MLET_SUFFIX}")


def _training_state(ckpt, model):
    """DLRM's checkpoint dict with our ``mlet`` record: what resuming needs beyond DLRM's keys."""
    config = session.config
    record = {"format": FORMAT_VERSION, "numpy_rng": numpy_rng_state()}
    if builds_tables():
        record.update({
            "hidden_dim": "-".join(map(str, config.per_table)) if config.per_table else config.hidden_dim,
            "min_rows": config.min_rows,
            "proj_init": config.proj_init,
            "table_dtype": config.table_dtype,
        })
    if ckpt.get("opt_state_dict") is not None:
        record["param_groups"] = session.group_names or param_group_names(model, ckpt["opt_state_dict"])
    if distributed.is_distributed():
        record.update(world_size=distributed.dist.get_world_size(), rank=distributed.dist.get_rank(),
                      local_emb_indices=list(model.local_emb_indices))
    return dict(to_plain(ckpt), mlet=record)


def save_training_checkpoint(ckpt: Checkpoint, path: str, model: nn.Module) -> None:
    """``--mlet-checkpoint``: the training state alone (MLET tables unfolded), atomically; a diverged
    state is refused before anything is written, so PATH keeps the last good checkpoint."""
    training = _training_state(ckpt, model)
    bad = first_non_finite(training["state_dict"])
    if bad:
        fail(diverged(ckpt, path, f"{bad[0]} row {bad[1]}", "--mlet-checkpoint"))
    try:
        atomic_save(training, path)
    except MLETError as error:
        fail(f"--mlet-checkpoint: {error}")


def diverged(ckpt: Checkpoint, path: str, where: str, flag: str = "--save-model") -> str:
    """The line a save stops DLRM with when a parameter is NaN or inf: what, when, what to change."""
    epoch, it = ckpt.get("epoch", 0), ckpt.get("iter", 0)
    groups = (ckpt.get("opt_state_dict") or {}).get("param_groups") or [{}]
    lr = f" (now {groups[0]['lr']:g})" if "lr" in groups[0] else ""
    kept = f"{path} and {path}{MLET_SUFFIX} keep" if flag == "--save-model" else f"{path} keeps"
    return (f"{flag}: training diverged: {where} is not finite (nan or inf) at epoch {epoch}, "
            f"iter {it} (step {ckpt.get('nbatches', 0) * epoch + it}); nothing was saved, {kept} "
            f"the last good checkpoint; lower --learning-rate{lr}, or K (--mlet-hidden-dim)")


def _fail_together(message, dist):
    """Stop every rank with the same line, each printing it before any exits.

    torchrun stops the other ranks as soon as one exits, so with ``fail``
    (whose message Python prints only on the way out) a slower rank could be
    killed before saying why. Written to stderr directly: DLRM's ``print``
    prints on rank 0 only.
    """
    sys.stderr.write(f"ERROR: {message}\n")
    sys.stderr.flush()
    dist.barrier()
    sys.exit(1)


def _global_name(key, model):
    """A distributed state-dict key with DLRM's global table number (keys count per rank)."""
    head, _, rest = key.partition(".")
    if head in ("emb_l", "v_W_l") and rest.split(".")[0].isdigit():
        local, _, tail = rest.partition(".")
        return f"{head}.{model.local_emb_indices[int(local)]}" + (f".{tail}" if tail else "")
    return key.replace(".module.", ".", 1)


def check_load(path: str) -> None:
    """Before DLRM's own ``torch.load`` of ``--load-model``: refuse unsafe files in one line.

    DLRM loads with weights-only unpickling, which also refuses such files but
    with a traceback; and stock DLRM's numpy scalars fail there too. With MLET
    off this does nothing (stock behaviour).
    """
    if not session.config.enabled:
        return

    try:
        if check_safe_to_load(path):
            raise MLETError(
                "it holds numpy scalars, which torch >= 2.6 refuses to load by default; use a "
                "checkpoint dlrm-mlet wrote (plain numbers), or set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "
                "only if you trust the file"
            )
    except MLETError as error:
        message = str(error)
        fail(f"--load-model={path}: {message[len(path) + 2:] if message.startswith(path) else message}")


def load_on_cpu(path: str) -> Checkpoint:
    """DLRM's ``torch.load(path, map_location="cpu")``, memory-mapped.

    The file's tensors are then read from the page cache while ``loaded``
    copies them into the model, and dropped after: loading a checkpoint
    needs no second copy of the tables in memory (8 GB at Criteo-Kaggle's
    size with d=64), which a run that fits in memory may not have. Same
    objects, same unpickling rules as DLRM's call.
    """
    # only torch.save's zip format can be mapped; a legacy file is read as DLRM reads it
    return torch.load(path, map_location=torch.device("cpu"), mmap=zipfile.is_zipfile(path))


def loaded(ckpt: Checkpoint, model: nn.Module, path: str) -> Checkpoint:
    """Adapt a checkpoint DLRM just loaded to the model it will load into.

    * MLET model, MLET checkpoint: checked table by table (shapes named).
    * MLET model, folded checkpoint: refused; resuming needs ``PATH.mlet``.
    * plain model (``--inference-only``, or MLET off), MLET checkpoint: folded
      here, state and optimizer, so DLRM loads a stock checkpoint.
    * plain model, plain checkpoint: what stock loads, once its tables' shapes
      are checked: a file of another architecture is one line, naming them.

    In every case the weights go into the model here (``_weights_in``).

    With ``--mlet-onnx-serving`` the model's forward then becomes ONNX Runtime's
    on its export (``onnx_serving.py``), made once the weights are in.
    """
    try:
        ckpt = _loaded(ckpt, model, path)
    except MLETError as error:
        flag = "--mlet-checkpoint" if session.config.checkpoint == path else "--load-model"
        fail(f"{flag}={path}: {error}")
    ckpt = _weights_in(ckpt, model)
    if session.config.onnx_serving:
        if distributed.is_distributed():  # each rank holds only its own tables: no whole model to export
            fail("--mlet-onnx-serving scores the whole model in one process; run it without the distributed launcher")
        onnx_serving.install(model, session.config.onnx_serving)
    return ckpt


def _loaded(ckpt, model, path):
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise MLETError("not a DLRM checkpoint (no 'state_dict' entry)")
    saved_world = ckpt.get("mlet", {}).get("world_size", 1)
    world = distributed.dist.get_world_size() if distributed.is_distributed() else 1
    if saved_world != world:
        raise MLETError(
            f"saved by {saved_world} ranks, loaded by {world}; resume with "
            f"--nproc_per_node={saved_world}, or load the folded checkpoint instead"
        )
    if world > 1 and distributed.dist.get_rank() > 0:
        ckpt = load_checkpoint(distributed.shard_path(path, distributed.dist.get_rank()))
    state = ckpt["state_dict"]
    ckpt_is_mlet = is_mlet_checkpoint(ckpt)
    if has_mlet_tables(model):
        if not ckpt_is_mlet:
            raise MLETError(
                f"this is a folded (stock) checkpoint and cannot resume MLET training; "
                f"load {path}{MLET_SUFFIX} instead, or add --inference-only"
            )
        check_shapes(state, model.state_dict(), dtypes=True)
        return _resuming(ckpt)
    if ckpt_is_mlet:
        if world > 1:
            raise MLETError("an MLET shard cannot be folded on load; load the folded checkpoint")
        print(f"MLET: folding the MLET checkpoint {path} into plain tables on load")
        ckpt = fold_checkpoint(ckpt) if ckpt.get("opt_state_dict") is not None else dict(
            ckpt, state_dict=fold_state_dict(state))
        check_shapes(ckpt["state_dict"], model.state_dict())
    elif world == 1:  # a plain file into a plain model: named here rather than by load_state_dict's traceback
        check_shapes(state, model.state_dict())
    return _resuming(ckpt) if resumes_exactly() else ckpt


def _weights_in(ckpt: Checkpoint, model: nn.Module) -> Checkpoint:
    """Load the weights now and hand DLRM the model's own tensors in their place.

    DLRM keeps the dict it loaded (``ld_model``) until training ends, so a
    loaded run would otherwise hold a second copy of every table the whole
    time: 8 GB more at Criteo-Kaggle's size with d=64, enough to push a run
    that fits out of memory. DLRM's own ``load_state_dict`` that follows then
    copies each tensor onto itself, which torch skips.
    """
    model.load_state_dict(ckpt["state_dict"])
    return dict(ckpt, state_dict=model.state_dict())


def _resuming(ckpt):
    """A checkpoint that resumes training exactly (``resume.py``): one saved at the end of an
    epoch resumes at the start of the next; one with nothing left to train is refused."""
    if ckpt.get("iter", 0) >= ckpt.get("nbatches", float("inf")):
        ckpt = dict(ckpt, epoch=ckpt["epoch"] + 1, iter=0)
    epochs = session.config.nepochs
    if ckpt["epoch"] >= epochs:
        raise MLETError(f"this checkpoint finished epoch {ckpt['epoch']} of {epochs} already: nothing is left to "
                        f"train; pass --nepochs={ckpt['epoch'] + 1} (or more) to train on, or --inference-only to "
                        "score it")
    print(f"MLET: resuming at epoch {ckpt['epoch'] + 1} of {epochs}, batch {ckpt['iter']} of {ckpt['nbatches']} "
          "(the batches before it are skipped)", flush=True)
    start_resume(ckpt)
    return ckpt


def check_shapes(saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], dtypes: bool = False) -> None:
    """Refuse a checkpoint of another architecture, naming what differs.

    With ``dtypes`` (resuming) the dtypes must match too: ``load_state_dict``
    would silently cast an fp16 table into an fp32 run's (``--mlet-table-dtype``).
    """
    problems = []
    for key in expected:
        if key not in saved:
            problems.append(f"{key} missing")
        elif tuple(saved[key].shape) != tuple(expected[key].shape):
            problems.append(
                f"{key} is {'x'.join(map(str, saved[key].shape))} in the file, "
                f"{'x'.join(map(str, expected[key].shape))} in this model"
            )
        elif dtypes and saved[key].dtype != expected[key].dtype:
            problems.append(f"{key} is {saved[key].dtype} in the file, {expected[key].dtype} in this model "
                            "(resume with the --mlet-table-dtype it was trained with)")
    problems += [f"{key} unexpected" for key in saved if key not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MLETError(
            "checkpoint does not match this model's architecture: " + "; ".join(problems[:3]) + more
        )


def for_export(model: nn.Module) -> nn.Module:
    """Fold MLET tables before ``--save-onnx`` so the exported graph is stock."""
    count = sum(is_mlet(m) for m in cast(nn.ModuleList, model.emb_l))  # DLRM_Net's tables
    try:
        model = fold_model(model)
    except MLETError as error:
        fail(f"--save-onnx: {error}")
    if count:
        print(f"MLET: folded {count} tables for ONNX export")
    return model
