"""Tests of the estimator table (analysis.bounds): each bound against its formula in
float64, masked rows never counting, and the moving-average state of mine-ema."""

import math

import numpy as np
import pytest
import torch

from analysis.bounds import BOUNDS, ESTIMATORS, make_bound, masked_log_mean_exp, masked_mean
from analysis.mi import MIOptions

OPTS = MIOptions(ema_alpha=0.25, smile_clip=1.5)


def _scores(k=3, r=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, r, generator=g, dtype=torch.float64), torch.randn(k, r, generator=g, dtype=torch.float64)


def _reference(name, joint, marg):
    """The bound of one problem's valid rows, written out with numpy."""
    joint, marg = np.asarray(joint), np.asarray(marg)
    if name in ("mine", "mine-ema"):
        return joint.mean() - math.log(np.exp(marg).mean())
    if name == "nwj":
        return joint.mean() - np.exp(marg - 1.0).mean()
    if name == "smile":
        return joint.mean() - math.log(np.exp(np.clip(marg, -1.5, 1.5)).mean())
    raise AssertionError(name)


def test_table_names_and_kinds():
    assert ESTIMATORS == ("mine", "mine-ema", "nwj", "infonce", "smile")
    assert [BOUNDS[n].pairwise for n in ESTIMATORS] == [False, False, False, True, False]
    with pytest.raises(ValueError, match="unknown estimator 'mime'"):
        make_bound("mime", OPTS)


@pytest.mark.parametrize("name", ["mine", "mine-ema", "nwj", "smile"])
def test_dual_bounds_match_their_formula_on_the_valid_rows(name):
    bound = make_bound(name, OPTS)
    joint, marg = _scores()
    lengths = [10, 4, 1]
    valid = torch.arange(10)[None, :] < torch.tensor(lengths)[:, None]
    joint = joint.masked_fill(~valid, 1e6)  # padding values must not count
    marg = marg.masked_fill(~valid, 1e6)
    value = bound.value(joint, marg, valid, valid.sum(1).double())
    for k, n in enumerate(lengths):
        assert value[k].item() == pytest.approx(_reference(name, joint[k, :n], marg[k, :n]), abs=1e-12)


@pytest.mark.parametrize("name", ["mine", "nwj", "smile"])
def test_training_loss_gradients_match_the_unpadded_problem(name):
    bound = make_bound(name, OPTS)
    joint, marg = _scores(k=1, r=8)
    valid = torch.arange(8)[None, :] < 5
    padded = [t.clone().requires_grad_(True) for t in (joint, marg)]
    loss, _ = bound.loss(*padded, valid, valid.sum(1).double(), None)
    loss.sum().backward()
    trimmed = [t[:, :5].clone().requires_grad_(True) for t in (joint, marg)]
    all_valid = torch.ones(1, 5, dtype=torch.bool)
    loss_trimmed, _ = bound.loss(*trimmed, all_valid, torch.tensor([5.0], dtype=torch.float64), None)
    loss_trimmed.sum().backward()
    assert loss.item() == pytest.approx(loss_trimmed.item(), abs=1e-12)
    for p, t in zip(padded, trimmed):
        torch.testing.assert_close(p.grad[:, :5], t.grad, rtol=0, atol=1e-12)
        assert torch.all(p.grad[:, 5:] == 0)
    if name == "mine":  # the DV loss is minus the bound it reports
        assert loss.item() == pytest.approx(-bound.value(joint, marg, valid, valid.sum(1).double()).item())


def test_equal_scores_give_zero():
    t = torch.full((2, 6), 0.7, dtype=torch.float64)
    valid = torch.ones(2, 6, dtype=torch.bool)
    count = torch.full((2,), 6.0, dtype=torch.float64)
    for name in ("mine", "smile"):
        torch.testing.assert_close(make_bound(name, OPTS).value(t, t, valid, count), torch.zeros(2, dtype=torch.float64))
    ones = torch.ones(2, 6, dtype=torch.float64)
    torch.testing.assert_close(make_bound("nwj", OPTS).value(ones, ones, valid, count),
                               torch.zeros(2, dtype=torch.float64))


def test_infonce_block_against_formula_and_its_ceiling():
    bound = make_bound("infonce", OPTS)
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 6, 6, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    scores[1, 4:, :] = 1e6  # rows and columns of padding
    scores[1, :, 4:] = 1e6
    count = valid.sum(1).double()
    value = bound.value(scores, valid, count)
    for k, n in enumerate((6, 4)):
        s = scores[k, :n, :n].numpy()
        expected = np.mean(np.diag(s) - np.log(np.exp(s).sum(1))) + math.log(n)
        assert value[k].item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(bound.block_sum(scores, valid, count), value * count)
    certain = torch.eye(6, dtype=torch.float64)[None] * 50.0  # the joint pair always wins
    assert bound.value(certain, valid[:1], count[:1]).item() == pytest.approx(math.log(6), abs=1e-12)
    empty = torch.zeros(1, 6, dtype=torch.bool)
    assert bound.block_sum(scores[:1], empty, torch.zeros(1, dtype=torch.float64)).item() == 0.0


def test_moving_average_state_starts_at_the_batch_and_then_blends():
    bound = make_bound("mine-ema", OPTS)
    state = bound.initial_state(2, torch.float64, torch.device("cpu"))
    valid = torch.ones(2, 5, dtype=torch.bool)
    count = torch.full((2,), 5.0, dtype=torch.float64)
    history = []
    for seed in range(3):
        joint, marg = _scores(k=2, r=5, seed=seed)
        _, state = bound.loss(joint, marg, valid, count, state)
        history.append(masked_log_mean_exp(marg, valid, count))
    log_ema, steps = state
    assert steps.tolist() == [3, 3]
    expected = history[0]
    for lme in history[1:]:
        expected = torch.log(0.75 * torch.exp(expected) + 0.25 * torch.exp(lme))
    torch.testing.assert_close(log_ema, expected, rtol=0, atol=1e-12)


def test_masked_helpers_ignore_invalid_entries():
    t = torch.tensor([[1.0, 2.0, float("nan")], [3.0, -1e30, 5.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False], [True, False, True]])
    count = valid.sum(1).double()
    torch.testing.assert_close(masked_mean(t, valid, count), torch.tensor([1.5, 4.0], dtype=torch.float64))
    expected = torch.tensor([math.log((math.e + math.e ** 2) / 2), math.log((math.e ** 3 + math.e ** 5) / 2)],
                            dtype=torch.float64)
    torch.testing.assert_close(masked_log_mean_exp(t, valid, count), expected)
