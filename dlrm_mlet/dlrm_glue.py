"""The glue between ``dlrm_s_pytorch.py`` and dlrm_mlet: the one module DLRM imports.

DLRM has no plugin hooks, so our patch adds a handful of one-line calls into
this module at the places that matter (``dlrm-mlet run`` runs a patched copy
of an unmodified checkout's script: ``dlrm/launcher.py``). DLRM's own code
decides nothing about MLET: every decision is in ``dlrm_mlet.dlrm``; this
module only names the call sites.
The patched script looks each function up here at call time (``mlet.save_model``),
so replacing one here replaces it for DLRM.

======================  =========  ===========================================================
DLRM call site          module     glue function
======================  =========  ===========================================================
``run()``, parser       options    ``add_arguments(parser)`` then ``configure(args)``
``create_emb``          tables     ``builds_tables()`` / ``create_emb(...)``
dataset loaders         loaders    ``make_data_and_loaders(args, dp)``
the optimizer's groups  lr_groups  ``param_groups(dlrm, parameters, lr)``
``apply_emb``           tables     ``apply_emb(...)`` (MLET tables as one autograd node)
``--load-model``        saving     ``check_load(path)``, ``load_on_cpu(path)`` (CPU), ``loaded(...)``
resume (not inference)  resume     ``resume_schedule(lr_scheduler, ld_model)``
``--save-model``        saving     ``save_model(model_metrics_dict, path, dlrm)``
``--save-onnx``         saving     ``for_export(dlrm)``
resume skip loop        resume     ``epoch_after_skip(k)``, ``skip_batch(...)``
after optimizer step    metrics    ``after_step(dlrm, writer, step)``
end of each batch       resumable  ``checkpoint(dlrm, args, locals())``
test scores (mlperf)    metrics    ``test_scores(scores, targets, step, forward)``
======================  =========  ===========================================================

With ``--mlet-hidden-dim`` absent or 0, and none of the options that work
without MLET (``--mlet-mmap-data``, ``--mlet-checkpoint``, the lr scales,
``--mlet-metrics-json``, ``--mlet-log-freq``), every function returns DLRM's own
behaviour unchanged: same tables, same RNG draws, same bytes on disk.

The run's state (its ``Config``, the monitor, the resume RNG) is
``session``'s, in ``dlrm/session.py``; code that builds DLRM models without
DLRM's parser sets it with ``use_config(Config(...))`` and ``reset()``.
"""

from .dlrm.loaders import make_data_and_loaders
from .dlrm.lr_groups import param_groups
from .dlrm.metrics import after_step, test_scores
from .dlrm.options import add_arguments, configure, parse_config
from .dlrm.resumable import checkpoint
from .dlrm.resume import epoch_after_skip, resume_schedule, skip_batch
from .dlrm.saving import check_load, for_export, load_on_cpu, loaded, save_model
from .dlrm.session import Config, builds_tables, reset, session, use_config
from .dlrm.tables import apply_emb, create_emb

__all__ = [
    # DLRM's call sites, in the order a run meets them
    "add_arguments", "configure", "builds_tables", "create_emb", "make_data_and_loaders", "param_groups",
    "check_load", "load_on_cpu", "loaded", "resume_schedule", "epoch_after_skip", "skip_batch", "apply_emb",
    "after_step", "test_scores", "save_model", "checkpoint", "for_export",
    # the run's state, for code that builds DLRM models without DLRM's parser
    "Config", "parse_config", "session", "use_config", "reset",
]
