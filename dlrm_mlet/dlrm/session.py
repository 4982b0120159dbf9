"""The state of one DLRM run as the glue sees it, kept in one object.

DLRM calls the glue as plain functions, so what ``configure`` parsed (and what
later calls remember: the monitor, the numpy RNG of a checkpoint being
resumed) must live somewhere between calls. It lives here, in ``session``,
and every module reads it as ``session.config``: nothing does
``from ... import config``, so a new run's config is never shadowed by a
stale copy.
"""

import sys
from dataclasses import dataclass
from typing import NoReturn


@dataclass
class Config:
    """What the ``--mlet-*`` options (and the DLRM options they depend on) asked for; built by keywords."""

    hidden_dim: int = 0  # the largest k (0: MLET off)
    per_table: tuple = ()  # one k per table when given as a dash-separated list (0: plain)
    min_rows: int = 0
    proj_init: str = "normal"
    inference_only: bool = False
    log_freq: int = 0
    metrics_json: str = ""
    fused_update: str = ""  # "" (off), "torch" or "fbgemm"
    grad_accum: int = 1  # batches per optimizer step (DLRM's --mlperf-grad-accum-iter)
    table_dtype: str = "fp32"  # storage of the k-wide tables: fp32, fp16 or bf16
    memory_budget: int = 0  # bytes of training embedding memory to plan the K per table for (0: off)
    budget_rule: str = "uniform"  # which tables the budget gives the large K (core.budget.RULES)
    optimizer: str = "sgd"  # DLRM's --optimizer: what the budget counts as optimizer state
    onnx_serving: str = ""  # score with ONNX Runtime on the model's export: fp32 or int8 ('' off)
    mmap_data: bool = False  # read DLRM's processed Criteo file memory-mapped (mapped.py)
    checkpoint: str = ""  # where the run keeps its resumable checkpoint ('' off)
    checkpoint_every: int = 0  # batches between resumable checkpoints
    table_lr_scale: float = 1.0  # the tables' learning rate, as a multiple of --learning-rate
    proj_lr_scale: float = 1.0  # the MLET projections' learning rate, as a multiple (0: frozen at init)
    nepochs: int = 1  # DLRM's --nepochs: what a resumed checkpoint has left to train
    save_model: str = ""  # DLRM's --save-model: where the run's checkpoints go (space is checked first)

    @property
    def enabled(self) -> bool:
        return self.hidden_dim > 0


@dataclass
class Scoring:
    """What ``--mlet-metrics-json`` scores beyond DLRM's test split, built at the first test."""

    args: object
    dp: object
    train_data: object
    test_ld: object
    validation: object = None  # the validation loader, () when the loader has no such split
    rarest: object = None  # per test sample, the training count of its rarest value; () if unknown


class Session:
    """One process's glue state: the current run's config and what it carries between calls."""

    def __init__(self):
        self.config = Config()
        self.monitor = None  # monitor.Monitor, made at the first logged step
        self.resume_rng = None  # numpy RNG state of the checkpoint being resumed, until its skip loop ends
        self.scoring = None  # Scoring, when --mlet-metrics-json asks for it
        self.training = None  # (train dataset, --max-ind-range), for --mlet-memory-budget's rare rule
        self.group_names = None  # parameter names per optimizer group, when lr_groups made the groups

    def start(self, config: Config) -> Config:
        """A new run: its config, and nothing left over from the last one."""
        self.config = config
        self.monitor = None
        self.resume_rng = None
        self.scoring = None
        self.training = None
        self.group_names = None
        return config


session = Session()


def use_config(config: Config) -> Config:
    """Make ``config`` the current run's (what ``configure`` does after parsing); returns it.

    For code that builds DLRM models without DLRM's parser (benchmarks, tests).
    """
    return session.start(config)


def reset() -> Config:
    """Back to MLET off, as a process that never ran DLRM."""
    return session.start(Config())


def resumes_exactly() -> bool:
    """Whether a resumed run continues the interrupted one exactly (``resume.py``'s fixes to DLRM's
    resume loop): MLET training, or any run keeping ``--mlet-checkpoint``; stock DLRM otherwise."""
    return builds_tables() or bool(session.config.checkpoint)


def builds_tables() -> bool:
    """Whether ``create_emb`` should build MLET tables (training with MLET).

    ``--inference-only`` runs build DLRM's plain tables: a saved MLET
    checkpoint is folded on load, so inference, quantization and ONNX export
    all see a stock model.
    """
    return session.config.enabled and not session.config.inference_only


def fail(message: str) -> NoReturn:
    """Stop DLRM with one line, as DLRM's own checks do (``sys.exit("ERROR: ...")``)."""
    sys.exit(f"ERROR: {message}")
