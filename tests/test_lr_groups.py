"""``--mlet-table-lr-scale`` and ``--mlet-proj-lr-scale`` in patched DLRM: the tables and projections
take their own step, on every update path, and stock runs keep stock's single optimizer group."""

import sys

import pytest
import torch

from test_dlrm_integration import BASE, MLET


def first_step(module, monkeypatch, argv):
    """The weights before training and after one SGD step, for ``argv``; and the optimizer's groups."""
    from dlrm_mlet import dlrm_glue

    seen = {}
    make = dlrm_glue.param_groups

    def snapshot(model, parameters, lr):
        seen["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["groups"] = make(model, parameters, lr)
        return seen["groups"]

    with monkeypatch.context() as m:
        m.setattr(dlrm_glue, "param_groups", snapshot)
        sys.argv = ["dlrm_s_pytorch.py"] + BASE + argv + ["--num-batches=1", "--nepochs=1", "--test-freq=0"]
        module.run()
    after = {k: v.detach().clone() for k, v in module.dlrm.state_dict().items()}
    return seen["before"], after, seen["groups"]


def moved(before, after, suffix):
    return {k: after[k] - before[k] for k in before if k.endswith(suffix)}


@pytest.mark.parametrize("update", ["--mlet-fused-update", "--mlet-fused-update=off"])
def test_a_table_scale_multiplies_the_tables_step_and_zero_freezes_the_projections(patched_module, tmp_path,
                                                                                   monkeypatch, update):
    monkeypatch.chdir(tmp_path)
    before, plain, _ = first_step(patched_module, monkeypatch, MLET + [update])
    _, scaled, groups = first_step(patched_module, monkeypatch, MLET + [update, "--mlet-table-lr-scale=3",
                                                                        "--mlet-proj-lr-scale=0"])
    assert [g["lr"] for g in groups] == [pytest.approx(0.3), 0.0, 0.1]  # tables, projections, MLPs
    steps, scaled_steps = moved(before, plain, "table.weight"), moved(before, scaled, "table.weight")
    assert steps and all(s.abs().max() > 0 for s in steps.values())
    for key, step in steps.items():
        assert torch.allclose(scaled_steps[key], 3 * step, atol=1e-7), key
    for key, step in moved(before, scaled, "proj.weight").items():
        assert torch.equal(step, torch.zeros_like(step)), key  # frozen at its init
    for key, step in moved(before, plain, "bot_l.0.weight").items():
        assert torch.equal(moved(before, scaled, "bot_l.0.weight")[key], step)  # the MLPs' step unchanged


def test_a_stock_model_takes_a_table_scale_and_is_untouched_without_one(patched_module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before, plain, groups = first_step(patched_module, monkeypatch, [])
    assert not isinstance(groups, list) or len(groups) == 1  # DLRM's own parameters, as given
    _, scaled, groups = first_step(patched_module, monkeypatch, ["--mlet-table-lr-scale=0.5"])
    assert [g["lr"] for g in groups] == [0.05, 0.1]
    for key, step in moved(before, plain, ".weight").items():
        factor = 0.5 if key.startswith("emb_l.") else 1.0
        assert torch.allclose(moved(before, scaled, ".weight")[key], factor * step, atol=1e-7), key
