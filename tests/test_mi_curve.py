"""The calibrated layer-curve estimators against known MI: Gaussian-copula MI, ladders,
calibration and the ``estimate_layer_curve`` entry point.

Ground truth comes from analytic Gaussian MI (-1/2 log det(I - R R^T) of a known
cross-correlation) and from the ladders' construction, checked here independently.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm, spearmanr

from analysis import estimate_layer_curve
from analysis.calibration import calibrate
from analysis.curve import CURVE_ESTIMATORS, CurveEstimator, get_estimator
from analysis.gaussian_mi import GaussianCopulaOptions, gaussian_copula_fold_estimates, normal_scores
from analysis.ladders import Ladder, _ar1, ladder_values, matched_ladders


def correlated_utterances(n_utts, frames, dim, rho, seed=0, warp=None):
    """X and T with per-dimension correlation ``rho`` in every one of ``dim`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    xs, ts = [], []
    for _ in range(n_utts):
        x = torch.randn(frames, dim, generator=g, dtype=torch.float64)
        t = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(frames, dim, generator=g, dtype=torch.float64)
        xs.append(x)
        ts.append(warp(t) if warp else t)
    return xs, ts, -0.5 * dim * math.log(1 - rho ** 2)


def gaussian_mi_in_sample(x, t):
    """Independent reference: 1/2 (log det Sxx + log det Stt - log det S) of the sample covariance."""
    z = torch.cat([x, t], 1).double()
    c = torch.cov(z.T)
    dx = x.shape[1]
    return 0.5 * float(torch.logdet(c[:dx, :dx]) + torch.logdet(c[dx:, dx:]) - torch.logdet(c))


def test_normal_scores_are_rank_based_and_match_scipy():
    a = torch.tensor([[3.0, -1.0], [1.0, 5.0], [2.0, 0.0], [10.0, 2.0]])
    ranks = np.array([[2, 0], [0, 3], [1, 1], [3, 2]])
    np.testing.assert_allclose(normal_scores(a).numpy(), norm.ppf((ranks + 0.5) / 4), rtol=1e-12)
    # Monotone maps of a column leave its scores unchanged.
    np.testing.assert_array_equal(normal_scores(torch.exp(a)).numpy(), normal_scores(a).numpy())


@pytest.mark.parametrize("rho, dim", [(0.3, 4), (0.8, 8), (0.95, 2)])
def test_gcmi_matches_analytic_gaussian_mi(rho, dim):
    xs, ts, truth = correlated_utterances(40, 200, dim, rho)
    estimate = gaussian_copula_fold_estimates(xs, ts, GaussianCopulaOptions(folds=8)).mean()
    assert estimate == pytest.approx(truth, rel=0.05, abs=0.02)


def test_gcmi_is_invariant_to_monotone_warps_and_zero_for_independent_features():
    xs, ts, truth = correlated_utterances(30, 150, 6, 0.7, warp=lambda t: torch.sinh(2 * t) + t ** 3)
    warped = gaussian_copula_fold_estimates(xs, ts).mean()
    assert warped == pytest.approx(truth, rel=0.06)
    g = torch.Generator().manual_seed(3)
    independent = [torch.randn(150, 6, generator=g) for _ in xs]
    assert abs(gaussian_copula_fold_estimates(xs, independent).mean()) < 0.05


def test_gcmi_held_out_is_not_fooled_by_many_noise_dimensions():
    """In-sample CCA of independent 64-d features on 1600 frames reads about dx*dt/(2n) > 1 nat."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(80, 64, generator=g) for _ in range(20)]
    ts = [torch.randn(80, 64, generator=g) for _ in range(20)]
    assert gaussian_mi_in_sample(torch.cat(xs), torch.cat(ts)) > 1.0
    assert gaussian_copula_fold_estimates(xs, ts).mean() < 0.3


def test_gcmi_bad_input_is_named():
    xs, ts, _ = correlated_utterances(6, 20, 3, 0.5)
    with pytest.raises(ValueError, match="3 utterances is fewer than the 4"):
        gaussian_copula_fold_estimates(xs[:3], ts[:3])
    with pytest.raises(ValueError, match=r"T frames have different dimensions across utterances: \[3, 4\]"):
        gaussian_copula_fold_estimates(xs, ts[:-1] + [torch.randn(20, 4)])
    with pytest.raises(ValueError, match="same utterances and frame counts"):
        gaussian_copula_fold_estimates(xs, ts[:-1] + [torch.randn(19, 3)])
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        GaussianCopulaOptions(folds=1)


def test_ladder_values_and_shapes():
    up_down = ladder_values(12, "falls then rises", 0.1, 40.0)
    assert up_down[0] == pytest.approx(40.0) and up_down.min() == pytest.approx(0.1)
    assert 0 < int(np.argmin(up_down)) < 11 and up_down[-1] > up_down.min()
    falls = ladder_values(5, "falls", 0.1, 40.0)
    assert np.all(np.diff(falls) < 0)
    with pytest.raises(ValueError, match="unknown ladder shape"):
        ladder_values(5, "rises", 0.1, 1.0)


def test_ladder_layers_carry_their_true_mi():
    """Checked independently: the in-sample Gaussian MI of many frames (no warp, no AR)."""
    ladder = Ladder("check", "falls", (3.0, 0.5, 6.0), (4000,), 8, (8, 6, 10), seed=1)
    latent = ladder.x_latent()
    x = ladder.observe_x(latent)[0]
    for i, truth in enumerate(ladder.true_mi):
        t = ladder.layer(i, latent)[0]
        assert t.shape == (4000, ladder.t_dims[i])
        assert gaussian_mi_in_sample(x, t) == pytest.approx(truth, rel=0.05, abs=0.02)


def test_ar1_frames_are_stationary_with_the_asked_correlation():
    e = torch.randn(4, 3000, 2, generator=torch.Generator().manual_seed(0))
    a = _ar1(e, 0.9)
    assert a.var().item() == pytest.approx(1.0, abs=0.1)
    lag1 = (a[:, 1:] * a[:, :-1]).mean() / (a * a).mean()
    assert lag1.item() == pytest.approx(0.9, abs=0.02)
    # The block filter equals the plain recursion.
    plain = torch.empty_like(e)
    plain[:, 0] = e[:, 0]
    for t in range(1, e.shape[1]):
        plain[:, t] = 0.9 * plain[:, t - 1] + math.sqrt(1 - 0.81) * e[:, t]
    torch.testing.assert_close(a, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ladder_index", [0, 1])
def test_default_curve_follows_small_ladders(ladder_index):
    """Tens of dimensions, tens of utterances: ranks and shape of the truth."""
    ladder = matched_ladders([60] * 30, 24, [24] * 8, seed=2)[ladder_index]
    latent = ladder.x_latent()
    xs = ladder.observe_x(latent)
    layers = [ladder.layer(i, latent) for i in range(ladder.n_layers)]
    utterances = [[xs[u]] + [layer[u] for layer in layers] for u in range(30)]
    curve = estimate_layer_curve(utterances, n_boot=300)
    assert curve.estimator == "gcmi" and curve.values.shape == (10, 8)
    assert spearmanr(ladder.true_mi, curve.means)[0] >= 0.9
    assert curve.verdict == ladder.shape
    assert np.all(curve.ci_low <= curve.means) and np.all(curve.means <= curve.ci_high)


def test_calibration_tells_a_faithful_estimator_from_a_blind_one():
    frames, x_dim, t_dims = [50] * 24, 16, [16] * 6
    good = calibrate(get_estimator("gcmi"), GaussianCopulaOptions(), frames, x_dim, t_dims, n_boot=300)
    assert good.trustworthy and good.spearman >= 0.9 and good.verdicts_ok == 2
    low, high = good.resolvable
    assert low <= 0.5 and high >= 10
    assert "trustworthy" in good.summary()

    def blind(pairs, options, seed, device):  # reads the same value on every layer
        rng = np.random.default_rng(seed)
        return 4.5 + 0.01 * rng.standard_normal((len(pairs.utt_ids), pairs.n_layers))

    bad = calibrate(CurveEstimator("blind", "nothing", "utterances", GaussianCopulaOptions, blind),
                    GaussianCopulaOptions(), frames, x_dim, t_dims, n_boot=300)
    assert not bad.trustworthy and bad.spearman < 0.5
    assert "NOT trustworthy" in bad.summary()


def test_estimate_layer_curve_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    utts = [[torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)] for _ in range(6)]
    with pytest.raises(ValueError, match="unknown estimator 'magic'"):
        estimate_layer_curve(utts, "magic")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epochs'\] of estimator 'gcmi'"):
        estimate_layer_curve(utts, epochs=3)
    nan = [list(u) for u in utts]
    nan[2][1] = nan[2][1].clone()
    nan[2][1][0, 0] = float("nan")
    with pytest.raises(ValueError, match="utterance 2, matrix 1: features contain NaN"):
        estimate_layer_curve(nan)
    with pytest.raises(ValueError, match="fewer than the 4"):
        estimate_layer_curve(utts[:3])
    with pytest.raises(ValueError, match="same L"):
        estimate_layer_curve(utts[:5] + [utts[5] + [torch.randn(30, 4)]])


def test_per_utterance_estimators_are_in_the_table():
    assert {"gcmi", "pooled-critic", "mine", "mine-ema", "nwj", "infonce", "smile"} == set(CURVE_ESTIMATORS)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 3, generator=g) for _ in range(4)]
    utts = [[x, x + 0.5 * torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g),
             torch.randn(64, 3, generator=g)] for x in xs]  # true MI 2.41, 0, 0 nats
    curve = estimate_layer_curve(utts, "mine", epochs=100, lr=3e-3, batch_size=64, n_boot=200)
    assert curve.unit == "utterances" and curve.values.shape == (4, 3)
    # Valued on its own training frames, MINE also reads about 1 nat where there is none.
    assert curve.means[0] > curve.means[1] + 0.8 and curve.means[1] > 0.5
