"""What a DLRM run reports beyond DLRM's own prints: test log loss and table spectra.

The MLET papers report test log loss, which DLRM does not print, and the
effective rank of the trained tables shows whether k was worth its cost.
"""

import json
import sys
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import MLETError
from ..files import atomic_write_text
from . import distributed, evaluation
from ..data.frequency import BUCKET_RULE, cap_rows
from ..data.mapped import Batch
from .monitor import Monitor
from .session import fail, session

if TYPE_CHECKING:  # tensorboard: DLRM's dependency, not ours
    from torch.utils.tensorboard import SummaryWriter


def after_step(model: nn.Module, writer: "SummaryWriter", step: Optional[int] = None) -> None:
    """After each optimizer step: TensorBoard spectra every ``--mlet-log-freq`` steps."""
    log_freq = session.config.log_freq
    if log_freq <= 0:
        return
    if session.monitor is None:
        session.monitor = Monitor(log_freq)
    session.monitor.after_step(model, writer, step)


def test_scores(scores: np.ndarray, targets: np.ndarray, step: Optional[int],
                forward: Optional[Callable[[Batch], torch.Tensor]] = None) -> None:
    """DLRM's test predictions (``--mlperf-logging``): log loss, validation, buckets, a file.

    DLRM prints AUC and accuracy but not the test log loss, which the MLET
    papers report; sweeps read all three from ``--mlet-metrics-json``, with
    the same metrics on the validation split (scored here with ``forward``,
    DLRM's own ``dlrm_wrap`` on one batch) to choose hyper-parameters on, and
    the test metrics by frequency bucket (``evaluation.py``).
    """
    path = session.config.metrics_json
    if not path:
        return
    metrics = {"step": None if step is None else int(step), **evaluation.binary_metrics(scores, targets)}
    print(f"MLET: test log loss {metrics['log_loss']:.6f}", flush=True)
    data = session.scoring
    if forward is not None and data is not None:
        if data.validation is None:
            data.validation = evaluation.validation_loader(data.args, data.dp, data.test_ld) or ()
        if data.validation:
            metrics["validation"] = evaluation.binary_metrics(*_score(forward, data.validation))
            print(f"MLET: validation AUC {metrics['validation']['auc']}, "
                  f"log loss {metrics['validation']['log_loss']:.6f}", flush=True)
    if distributed.is_distributed() and distributed.dist.get_rank() != 0:
        return
    if data is not None:
        metrics["buckets"] = _buckets(data, scores, targets)
    try:
        atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    except MLETError as error:  # "cannot write PATH: reason; ..."
        fail(f"--mlet-metrics-json: {error}")


def _score(forward, loader):
    """Scores and targets of a whole split, gathered across ranks as DLRM's ``inference`` does."""
    ext_dist = sys.modules.get("extend_distributed") if distributed.is_distributed() else None
    ranks = ext_dist.my_size if ext_dist is not None else 1
    scores, targets = [], []
    with torch.no_grad():
        for batch in loader:
            if ranks > 1 and batch[0].size(0) % ranks:
                continue  # DLRM skips these too: its distributed forward splits the batch evenly
            z = forward(batch)
            if ranks > 1:
                z = ext_dist.all_gather(z, ext_dist.get_split_lengths(batch[0].size(0))[1])
            scores.append(z.detach().cpu().numpy())
            targets.append(batch[3].detach().cpu().numpy())
    return np.concatenate(scores), np.concatenate(targets)


def _buckets(data, scores, targets):
    """Test metrics by frequency bucket; the counts and each sample's bucket computed once."""
    if data.rarest is None:
        mir = data.args.max_ind_range
        sizes = cap_rows(data.train_data.counts, mir)  # DLRM's ln_emb rule
        counts = evaluation.train_counts(data.train_data, sizes, mir)
        data.rarest = () if counts is None else evaluation.rarest_counts(data.test_ld, counts)
    if not len(data.rarest):
        return {"rule": BUCKET_RULE, "note": "not computed for this data loader", "test": []}
    # DLRM's inference stops after ``nbatches`` test batches (and skips uneven ones in
    # distributed mode): both cut the tail, so the first len(scores) samples are the scored ones.
    n = len(scores)
    if len(data.rarest) < n:  # a loader that yields more than it holds: say so, never guess a pairing
        return {"rule": BUCKET_RULE, "test": [],
                "note": f"not computed: {n} test scores but only {len(data.rarest)} test samples"}
    return {"rule": BUCKET_RULE, "test": evaluation.bucket_metrics(scores, targets, data.rarest[:n])}
