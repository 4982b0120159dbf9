"""Work deferred to the optimizer's step (core/step.py): attach/detach, the global hook, exact counts, early refusals."""

import gc

import pytest
import torch

from dlrm_mlet import MLETError, to_mlet
from dlrm_mlet.core import step
from dlrm_mlet.core.bag import MLETEmbeddingBag
from dlrm_mlet.engine import fused
from dlrm_mlet.engine.grouped import grouped_forward


@pytest.fixture(autouse=True)
def no_global_hook():
    step.remove_global_hook()
    yield
    step.remove_global_hook()


def _half_model():
    torch.manual_seed(0)
    return to_mlet(torch.nn.Sequential(torch.nn.EmbeddingBag(40, 4, mode="sum")), 16, table_dtype="fp16")


def _train_step(model, optimizer):
    out = model[0](torch.tensor([1, 2, 3]), torch.tensor([0, 2]))
    optimizer.zero_grad()
    out.sum().backward()
    optimizer.step()


def test_an_attached_optimizer_needs_no_global_hook_and_detach_removes_its_hook():
    model = _half_model()
    table = model[0].table.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = step.attach(optimizer)
    assert step.attach(optimizer) is handle  # attaching twice is one hook
    before = table.detach().clone()
    _train_step(model, optimizer)
    assert step._global is None  # the attached optimizer's parameters never installed it
    assert not torch.equal(table, before) and step.pending(model) == 0
    step.detach(optimizer)
    before = table.detach().clone()
    model[0](torch.tensor([1]), torch.tensor([0])).sum().backward()
    assert step.pending(model) == 1
    assert step._global is None  # still held by an optimizer attached once: no global hook
    optimizer.step()
    assert torch.equal(table, before)  # detached: nothing applies its rows
    assert step.pending(model) == 1


def test_without_attach_the_global_hook_applies_the_rows_of_what_the_optimizer_holds():
    model = _half_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[0].table.weight.detach().clone()
    model[0](torch.tensor([1, 2, 3]), torch.tensor([0, 2])).sum().backward()
    assert step._global is not None and step.pending(model) == 3
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    other.step()  # another optimizer's step leaves these rows waiting
    assert step.pending(model) == 3
    optimizer.step()
    assert step.pending(model) == 0 and not torch.equal(model[0].table.weight, before)


def test_the_pending_count_is_exact_when_a_model_is_dropped():
    model = _half_model()
    model[0](torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    waiting = step.waiting()
    assert waiting >= 1
    del model
    gc.collect()
    assert step.waiting() == waiting - 1  # its rows died with it


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.Adam(params, lr=0.1),
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
])
def test_attach_refuses_an_optimizer_half_tables_cannot_use_before_any_step(make):
    model = _half_model()
    with pytest.raises(MLETError, match="fp16 MLET tables"):
        step.attach(make(model.parameters()))


def test_attach_refuses_what_the_fused_update_cannot_apply():
    tables = [MLETEmbeddingBag(20, 4, 16) for _ in range(2)]
    fused.use(tables)
    params = [p for t in tables for p in t.parameters()]
    with pytest.raises(MLETError, match="plain SGD steps"):
        step.attach(torch.optim.Adagrad(params, lr=0.1))
    optimizer = torch.optim.SGD(params, lr=0.1)
    step.attach(optimizer)
    out = grouped_forward(tables, [torch.tensor([1, 2])] * 2, [torch.tensor([0, 1])] * 2, [None, None])
    sum(o.sum() for o in out).backward()
    assert fused.pending_rows(tables) == 4
    optimizer.step()
    assert fused.pending_rows(tables) == 0
    fused.use(tables, None)  # back to sparse gradients: no requirement left
    step.attach(torch.optim.Adagrad(params, lr=0.1))
    step.detach(optimizer)


def test_on_step_hooks_are_named_and_replaced():
    calls = []
    step.on_step("test hook", lambda *a: calls.append("first"), after=True)
    step.on_step("test hook", lambda *a: calls.append("second"), after=True)
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1).step()
    step.remove("test hook")
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1).step()
    assert calls == ["second"]
