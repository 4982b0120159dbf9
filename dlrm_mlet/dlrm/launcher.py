"""``dlrm-mlet run``: MLET on an unmodified DLRM checkout.

For users who may not patch their checkout. We import ``dlrm_s_pytorch.py``
as a module (its ``__main__`` guard keeps it from running), put the glue
calls the patch would add at the same places, then call its ``run()``:

* DLRM's parser gets our ``--mlet-*`` options and is checked by ``configure``
  (its ``argparse`` is swapped for one whose parser does that);
* ``DLRM_Net.create_emb`` and ``apply_emb`` defer to the glue when MLET
  builds the tables;
* its ``torch`` is swapped for a view of torch whose ``save``, ``load`` and
  ``onnx.export`` pass through ``save_model``, ``loaded`` and ``for_export``;
* its data module ``dp`` is swapped for a view whose loader factory is the
  glue's ``make_data_and_loaders`` (our preprocessing, Avazu);
* a global optimizer step hook calls the glue's ``after_step`` (TensorBoard);
* its ``sklearn`` is swapped for a view whose ``roc_auc_score`` first hands the
  test scores, and a forward for the validation split, to the glue's ``test_scores``.

Not hooked, because DLRM's loop has no seam to hold: the resume fix of
``epoch_after_skip``/``skip_batch``, ``--mlet-checkpoint`` (at the end of each
batch) and the lr scales (the optimizer's groups). So resuming MLET training
and those options are refused here with a message pointing to the patch;
loading for ``--inference-only`` works.

Same glue functions as the patch, so both give the same model for the same
arguments; a test holds them to that.
"""

import argparse
import os
import sys
import types

import torch

from .. import dlrm_glue
from ..core import step
from ..errors import MLETError
from .patching import is_patched_source
from .script import import_dlrm_script


class _MLETParser(argparse.ArgumentParser):
    """DLRM's parser with the patch's two lines around ``parse_args``."""

    def parse_args(self, args=None, namespace=None):
        dlrm_glue.add_arguments(self)
        parsed = super().parse_args(args, namespace)
        config = dlrm_glue.configure(parsed)
        for flag, given in (("--mlet-checkpoint", config.checkpoint),
                            ("--mlet-table-lr-scale", config.table_lr_scale != 1.0),
                            ("--mlet-proj-lr-scale", config.proj_lr_scale != 1.0)):
            if given:  # their call sites are in DLRM's loop and optimizer line: only the patch reaches them
                sys.exit(f"ERROR: {flag} needs the patched script: dlrm-mlet patch DLRM_DIR, then run "
                         "DLRM_DIR/dlrm_s_pytorch.py")
        return parsed


def _argparse_view():
    view = types.ModuleType("argparse")
    view.__dict__.update(vars(argparse))
    view.ArgumentParser = _MLETParser
    return view


class _TorchView(types.ModuleType):
    """torch, except for the three calls the patch reroutes."""

    def __init__(self, script):
        super().__init__("torch")
        self._script = script
        self.onnx = types.SimpleNamespace(export=self._onnx_export)

    def __getattr__(self, name):
        return getattr(torch, name)

    def save(self, obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "state_dict" in obj and f == self._script.args.save_model:
            return dlrm_glue.save_model(obj, f, self._script.dlrm)
        return torch.save(obj, f, *args, **kwargs)

    def load(self, f, *args, **kwargs):
        if f == self._script.args.load_model:
            dlrm_glue.check_load(f)
        obj = torch.load(f, *args, **kwargs)
        if f == self._script.args.load_model:
            obj = dlrm_glue.loaded(obj, self._script.dlrm, f)
        return obj

    def _onnx_export(self, model, *args, **kwargs):
        return torch.onnx.export(dlrm_glue.for_export(model), *args, **kwargs)


class _DataView(types.ModuleType):
    """DLRM's data module, with its loader factory going through the glue."""

    def __init__(self, dp):
        super().__init__(dp.__name__)
        self._dp = dp

    def __getattr__(self, name):
        return getattr(self._dp, name)

    def make_criteo_data_and_loaders(self, args):
        return dlrm_glue.make_data_and_loaders(args, self._dp)


def _sklearn_view(module):
    """sklearn for DLRM's test metrics: AUC also hands the scores (and a forward) to the glue."""
    import sklearn.metrics as metrics

    def forward(batch):  # what the patch passes: dlrm_wrap with run()'s use_gpu and device
        use_gpu = module.args.use_gpu and torch.cuda.is_available()
        ext_dist = module.ext_dist
        device = torch.device("cuda", ext_dist.my_local_rank if ext_dist.my_size > 1 else 0) if use_gpu else "cpu"
        return module.dlrm_wrap(*batch[:3], use_gpu, device, module.ndevices)

    def roc_auc_score(y_true, y_score, *args, **kwargs):
        dlrm_glue.test_scores(y_score, y_true, None, forward)
        return metrics.roc_auc_score(y_true, y_score, *args, **kwargs)

    view = types.ModuleType("sklearn")
    view.__dict__.update(vars(module.sklearn))
    view.metrics = types.ModuleType("sklearn.metrics")
    view.metrics.__dict__.update(vars(metrics))
    view.metrics.roc_auc_score = roc_auc_score
    return view


def install_hooks(module):
    dlrm_glue.session.can_resume = False
    module.argparse = _argparse_view()
    module.torch = _TorchView(module)
    module.dp = _DataView(module.dp)
    module.sklearn = _sklearn_view(module)
    original = module.DLRM_Net.create_emb

    def create_emb(self, m, ln, weighted_pooling=None):
        if dlrm_glue.builds_tables():
            return dlrm_glue.create_emb(self, m, ln, weighted_pooling)
        return original(self, m, ln, weighted_pooling)

    module.DLRM_Net.create_emb = create_emb
    original_apply = module.DLRM_Net.apply_emb

    def apply_emb(self, lS_o, lS_i, emb_l, v_W_l):
        if dlrm_glue.builds_tables():
            return dlrm_glue.apply_emb(lS_o, lS_i, emb_l, v_W_l)
        return original_apply(self, lS_o, lS_i, emb_l, v_W_l)

    module.DLRM_Net.apply_emb = apply_emb
    # The patch calls after_step with DLRM's own step number; here the glue counts steps.
    step.on_step("dlrm-mlet run: after DLRM's step",
                 lambda optimizer, args, kwargs: dlrm_glue.after_step(module.dlrm, module.writer), after=True)


def run_script(script, dlrm_args):
    """Run DLRM's ``run()`` with MLET hooked in; returns its exit status."""
    script = os.path.abspath(script)
    if not os.path.isfile(script):
        raise MLETError(f"{script}: no such file (expected DLRM_DIR/dlrm_s_pytorch.py)")
    with open(script, encoding="utf-8") as handle:
        source = handle.read()
    if "class DLRM_Net" not in source or "def run()" not in source:
        raise MLETError(f"{script}: not DLRM's dlrm_s_pytorch.py (no DLRM_Net or run())")
    sys.argv = [script] + list(dlrm_args)
    # Its folder stays on sys.path, as when DLRM runs as ``python dlrm_s_pytorch.py``.
    module = import_dlrm_script(script, "dlrm_s_pytorch", keep_path=True)
    if not is_patched_source(source):
        install_hooks(module)  # a patched script already calls the glue itself
    module.run()
    return 0
