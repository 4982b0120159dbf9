"""What a DLRM run reports beyond DLRM's own prints: test log loss and table spectra.

The MLET papers report test log loss, which DLRM does not print, and the
effective rank of the trained tables shows whether k was worth its cost.
"""

from ..errors import MLETError
from ..files import atomic_write_text
from .session import fail, session


def after_step(model, writer, step=None):
    """After each optimizer step: TensorBoard spectra every ``--mlet-log-freq`` steps."""
    log_freq = session.config.log_freq
    if log_freq <= 0:
        return
    if session.monitor is None:
        from ..tools.monitor import Monitor

        session.monitor = Monitor(log_freq)
    session.monitor.after_step(model, writer, step)


def test_scores(scores, targets, step):
    """DLRM's test predictions (``--mlperf-logging``): log loss, and a metrics file.

    DLRM prints AUC and accuracy but not the test log loss, which the MLET
    papers report; sweeps read all three from ``--mlet-metrics-json``.
    """
    path = session.config.metrics_json
    if not path:
        return
    import json

    import numpy as np
    import sklearn.metrics

    from . import distributed

    p = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    metrics = {
        "step": None if step is None else int(step),
        "samples": int(y.size),
        "auc": float(sklearn.metrics.roc_auc_score(y, p)) if 0 < y.sum() < y.size else None,
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "accuracy": float(np.mean(np.round(p) == y)),
    }
    print(f"MLET: test log loss {metrics['log_loss']:.6f}", flush=True)
    if distributed.is_distributed() and distributed.dist.get_rank() != 0:
        return
    try:
        atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    except MLETError as error:  # "cannot write PATH: reason; ..."
        fail(f"--mlet-metrics-json: {error}")
