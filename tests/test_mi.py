"""Tests of the single-pair MI estimators (analysis.mi).

Accuracy tests use correlated Gaussians with a known MI,
I = -(d/2) log(1 - rho^2) for x, y in R^d with componentwise correlation rho.
Estimates are evaluated on the training frames (as in the paper), so large critics
overfit a little; the settings below (frames, epochs, learning rate) keep each
estimate within the stated tolerance and each test within seconds on one CPU core.
The tolerance (0.15 + 0.1 I nats) is far tighter than the errors of a broken
estimator: a sign error gives a negative value, a missing log in the DV bound is
off by about 1 nat, and an unshuffled marginal gives about 0 (tested below).
"""

import math

import numpy as np
import pytest
import torch

from analysis import rng
from analysis.engine import estimate_mi_batched
from analysis.frames import standardize_frames
from analysis.mi import ESTIMATORS, MIOptions, estimate_mi, resolve_options

CASES = [(1, 0.8), (5, 0.5), (20, 0.3)]  # (d, rho): true MI 0.51, 0.72, 0.94 nats

# Per-estimator training settings for the accuracy tests (the rest are the defaults).
SETTINGS = {
    "mine": dict(epochs=10, lr=3e-3),
    "mine-ema": dict(epochs=10, lr=3e-3),
    "smile": dict(epochs=10, lr=3e-3),
    "nwj": dict(epochs=25, lr=3e-3),  # NWJ also has to learn the normalization: slower
    "infonce": dict(epochs=4, lr=3e-3, batch_size=32),  # b^2 critic calls per batch
}


def gaussian_pair(n, d, rho, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1.0 - rho ** 2) * torch.randn(n, d, generator=g)
    return x, y, -0.5 * d * math.log(1.0 - rho ** 2)


def tolerance(true_mi):
    return 0.15 + 0.1 * true_mi


@pytest.mark.parametrize("d,rho", CASES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_correlated_gaussians_match_analytic_mi(estimator, d, rho):
    torch.manual_seed(1234)  # the estimators must not depend on the global RNG
    x, y, true_mi = gaussian_pair(4000, d, rho)
    value = estimate_mi(x, y, estimator, **SETTINGS[estimator])
    assert abs(value - true_mi) < tolerance(true_mi), (estimator, d, value, true_mi)


def test_tolerance_rejects_an_unshuffled_marginal(monkeypatch):
    """The accuracy tolerance catches a broken estimator (marginal = joint pairs)."""

    def identity_epoch(self, epoch, batch_size):
        order = torch.where(self.valid, self.positions[None, :], torch.zeros_like(self.valid, dtype=torch.int64))
        return order, self.positions[None, :].expand_as(order).clone()

    monkeypatch.setattr(rng.ProblemRandom, "epoch", identity_epoch)
    monkeypatch.setattr(rng.ProblemRandom, "eval_permutation", lambda self: self.positions[None, :].clone())
    x, y, true_mi = gaussian_pair(4000, 1, 0.8)
    value = estimate_mi(x, y, "mine", **SETTINGS["mine"])
    assert abs(value) < 1e-6
    assert abs(value - true_mi) > tolerance(true_mi)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_independent_variables_give_about_zero(estimator):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 5, generator=g)
    y = torch.randn(3000, 5, generator=g)
    settings = dict(SETTINGS[estimator], epochs=4)
    value = estimate_mi(x, y, estimator, **settings)
    assert abs(value) < 0.06, value


def test_data_processing_noise_lowers_mi():
    """I(X; X + s * noise) = (d/2) log(1 + 1/s^2) decreases as s grows."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 2, generator=g)
    noise = torch.randn(3000, 2, generator=g)
    values = [estimate_mi(x, x + s * noise, "mine", epochs=10, lr=3e-3) for s in (0.3, 1.0, 3.0)]
    truth = [math.log(1.0 + 1.0 / s ** 2) for s in (0.3, 1.0, 3.0)]  # 2.48, 0.69, 0.11
    assert values[0] > values[1] + 0.3 and values[1] > values[2] + 0.2, values
    np.testing.assert_allclose(values, truth, atol=0.4)


def test_short_utterance_trains_with_one_batch_of_all_frames():
    """n < batch_size: each epoch is one batch of all n frames, not zero training."""
    x, y, true_mi = gaussian_pair(50, 1, 0.95, seed=3)  # true MI 1.16 nats
    short = estimate_mi(x, y, epochs=100, lr=3e-3)  # batch_size 128 > 50 frames
    explicit = estimate_mi(x, y, epochs=100, lr=3e-3, batch_size=50)
    assert short == explicit
    assert short > 0.5, short


def test_too_few_frames_raise():
    with pytest.raises(ValueError, match="too few frames"):
        estimate_mi(torch.randn(1, 3), torch.randn(1, 2))
    with pytest.raises(ValueError, match="min_frames"):
        estimate_mi(torch.randn(4, 3), torch.randn(4, 2), min_frames=5)


def test_input_validation():
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    with pytest.raises(ValueError, match="same number of frames"):
        estimate_mi(x, y[:19])
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        estimate_mi(bad, y)
    bad = y.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="y contains NaN or infinite"):
        estimate_mi(x, bad)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_mi(x, y, "mime")
    with pytest.raises(ValueError, match="unknown MI option"):
        estimate_mi(x, y, epoch=3)
    with pytest.raises(ValueError, match="frames, dims"):
        estimate_mi(torch.randn(2, 20, 3), y)


@pytest.mark.parametrize(
    "field,value",
    [
        ("lr", 0.0),
        ("epochs", 0),
        ("batch_size", 1),
        ("hidden", ()),
        ("hidden", (10, 0)),
        ("seed", -1),
        ("dtype", torch.float16),
        ("min_frames", 1),
        ("ema_alpha", 0.0),
        ("ema_alpha", 1.5),
        ("smile_clip", 0.0),
        ("adam_betas", (0.9, 1.0)),
        ("adam_eps", 0.0),
    ],
)
def test_bad_hyperparameters_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        MIOptions(**{field: value})


def test_options_defaults_are_the_papers_recipe():
    opts = MIOptions()
    assert (opts.hidden, opts.lr, opts.epochs, opts.batch_size) == ((100, 100), 1e-4, 100, 128)
    assert opts.standardize
    assert resolve_options(opts, epochs=3).epochs == 3


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_anomaly_detection_is_off_during_training(monkeypatch):
    """Even with anomaly detection switched on by the caller."""
    seen = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(torch.is_anomaly_enabled())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    x, y = torch.randn(40, 2), torch.randn(40, 2)
    with torch.autograd.detect_anomaly():
        estimate_mi(x, y, epochs=2, batch_size=16)
        estimate_mi_batched([x, x], [y, y.flip(0)], epochs=2, batch_size=16, progress=False)
        assert torch.is_anomaly_enabled()
    assert seen and not any(seen)


def test_fresh_critic_per_pair():
    """A pair's estimate does not depend on what was estimated before it."""
    g = torch.Generator().manual_seed(4)
    xa, ya = torch.randn(60, 3, generator=g), torch.randn(60, 3, generator=g)
    xb = torch.randn(60, 3, generator=g)
    yb = xb + 0.1 * torch.randn(60, 3, generator=g)
    kwargs = dict(epochs=5, lr=1e-2, batch_size=16)
    first = estimate_mi(xa, ya, **kwargs)
    estimate_mi(xb, yb, **kwargs)
    assert estimate_mi(xa, ya, **kwargs) == first


def test_same_seed_same_value_other_seed_other_value():
    x, y, _ = gaussian_pair(200, 2, 0.7)
    a = estimate_mi(x, y, epochs=3, lr=1e-2, seed=5)
    assert estimate_mi(x, y, epochs=3, lr=1e-2, seed=5) == a
    assert estimate_mi(x, y, epochs=3, lr=1e-2, seed=6) != a


def test_numpy_and_1d_inputs():
    x, y, _ = gaussian_pair(100, 1, 0.7)
    ref = estimate_mi(x, y, epochs=2)
    assert estimate_mi(x.numpy(), y.numpy(), epochs=2) == ref
    assert estimate_mi(x[:, 0], y[:, 0].numpy(), epochs=2) == ref


def test_standardize_frames_against_float64_reference():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(50, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 1e-3, 0.0]) + 7.0
    a = a.float().double()  # the reference sees the same float32-rounded input
    z = standardize_frames(a.float())
    ref = (a - a.mean(0)) / a.std(0, unbiased=False)
    np.testing.assert_allclose(z[:, :3].numpy(), ref[:, :3].numpy(), atol=1e-5)
    assert torch.all(z[:, 3].abs() < 1e-6)  # constant column -> 0, rounding not amplified


def test_standardized_estimate_ignores_feature_scale():
    x, y, _ = gaussian_pair(300, 2, 0.7, seed=6)
    kwargs = dict(epochs=3, lr=1e-2, dtype=torch.float64)
    a = estimate_mi(x, y, **kwargs)
    b = estimate_mi(1000.0 * x.double() - 5.0, 0.01 * y.double(), **kwargs)
    assert abs(a - b) < 1e-8


def test_infonce_stays_below_log_batch_size():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, 2, generator=g)
    value = estimate_mi(x, x.clone(), "infonce", epochs=30, lr=3e-3, batch_size=16)
    assert value <= math.log(16) + 1e-5
    assert value > math.log(16) - 0.5  # y = x: the bound is nearly saturated


def test_inputs_with_autograd_history_are_data():
    x = torch.randn(64, 2, requires_grad=True)
    y = 2.0 * x + 0.1  # carries a graph back to x
    value = estimate_mi(x, y, epochs=2, batch_size=32)
    assert value == estimate_mi(x.detach(), y.detach(), epochs=2, batch_size=32)
    assert x.grad is None
