"""What the projection does to a table's step: the figures the learning-rate advice rests on.

With the default projection init N(0, 0.25^2), a step on the k-wide row moves
the folded row, along the descent direction, about k/16 times as far as the
same optimizer's step on a plain row with SGD, and about 0.25 k / sqrt(d)
times with Adagrad (whose first step is a sign step on each of k coordinates
instead of d). Measured on ``MLETEmbeddingBag`` and torch's own optimizers,
averaged over random rows and gradients.
"""

import math

import pytest
import torch

from dlrm_mlet.core.bag import MLETEmbeddingBag


def _folded_step(optimizer_cls, d, k, trials=60):
    """Mean (folded-row move along -grad) / (plain-row move along -grad) after one step at lr 1e-3."""
    ratios = []
    for seed in range(trials):
        torch.manual_seed(seed)
        mlet = MLETEmbeddingBag(1, d, k, sparse=False)
        plain = torch.nn.EmbeddingBag(1, d, mode="sum")
        direction = torch.randn(d)  # the gradient with respect to the pooled (folded) row
        moves = []
        for module in (mlet, plain):
            before = (mlet.folded_weight() if module is mlet else plain.weight).detach().clone()
            opt = optimizer_cls(module.parameters(), lr=1e-3)
            if module is mlet:
                mlet.proj.weight.requires_grad_(False)  # the table's step alone
            (module(torch.tensor([0]), torch.tensor([0])) @ direction).sum().backward()
            opt.step()
            after = mlet.folded_weight() if module is mlet else plain.weight
            moves.append(float(((before - after.detach()) @ direction).sum()))
        ratios.append(moves[0] / moves[1])
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize("d, k", [(4, 256), (16, 64), (64, 256)])
def test_sgd_step_is_k_over_16_times_a_plain_rows(d, k):
    assert _folded_step(torch.optim.SGD, d, k) == pytest.approx(k / 16, rel=0.1)


@pytest.mark.parametrize("d, k", [(4, 256), (16, 64), (64, 256)])
def test_adagrad_first_step_is_a_quarter_k_over_sqrt_d_times_a_plain_rows(d, k):
    assert _folded_step(torch.optim.Adagrad, d, k) == pytest.approx(0.25 * k / math.sqrt(d), rel=0.15)
