"""Tests of analysis.stats: bootstrap intervals, layer summaries, trend verdicts, log n flags."""

import math

import numpy as np
import pytest

from analysis.stats import bootstrap_ci, bootstrap_means, near_log_n, summarize_layers, trend_verdict


def curves(shape, n_utt=200, noise=1.0, seed=0):
    """Per-utterance curves ``(U, L)``: a layer shape plus an utterance offset plus noise."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape, dtype=np.float64)
    offset = rng.normal(0.0, 2.0, size=(n_utt, 1))  # utterances differ in level
    return shape[None, :] + offset + rng.normal(0.0, noise, size=(n_utt, len(shape)))


def test_bootstrap_ci_contains_the_mean_and_matches_the_normal_interval():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, size=400)
    low, high = bootstrap_ci(values, level=0.95, n_boot=4000, seed=0)
    assert low[0] < values.mean() < high[0]
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (high[0] - low[0]) / 2 == pytest.approx(half, rel=0.1)


def test_bootstrap_is_seeded_and_narrows_with_more_data():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(100, 3))
    a = bootstrap_ci(values, seed=5, n_boot=500)
    b = bootstrap_ci(values, seed=5, n_boot=500)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    big = rng.normal(size=(1600, 3))
    wide = a[1] - a[0]
    narrow = np.subtract(*bootstrap_ci(big, seed=5, n_boot=500)[::-1])
    assert np.all(narrow < wide / 2)


def test_bootstrap_means_are_means_of_resampled_rows():
    values = np.arange(12, dtype=float).reshape(4, 3)
    means = bootstrap_means(values, n_boot=300, seed=0)
    assert means.shape == (300, 3)
    # Every column is resampled with the same rows: column differences are constant here.
    np.testing.assert_allclose(means[:, 1] - means[:, 0], 1.0)
    assert means.min() >= 0 and means.max() <= 11


def test_summarize_layers():
    values = curves([5, 4, 3], n_utt=50)
    summary = summarize_layers(values, n_boot=1000)
    np.testing.assert_allclose(summary.mean, values.mean(0))
    np.testing.assert_allclose(summary.std, values.std(0, ddof=1))
    assert np.all(summary.ci_low < summary.mean) and np.all(summary.mean < summary.ci_high)
    assert summary.n == 50 and summary.level == 0.95


LAYERS = np.arange(12)


@pytest.mark.parametrize(
    "shape,expected",
    [
        (5.0 - 0.3 * LAYERS, "falls"),
        (np.maximum(5.0 - 0.6 * LAYERS, 2.0), "falls"),  # falls, then a flat tail
        (0.05 * (LAYERS - 6.0) ** 2, "falls then rises"),
        (np.r_[5.0 - 0.3 * LAYERS[:11], 5.0], "falls then rises"),  # sharp rise at the last layer
        (np.zeros(12), "unclear"),
        (0.3 * LAYERS, "unclear"),  # rises only
    ],
)
def test_trend_verdict_on_synthetic_curves(shape, expected):
    # Data seed 1: with seed 0 the flat-tail sample happens to be one of the ~5% that
    # show a significant rise (the rate is checked in the next test).
    values = curves(shape, seed=1)
    verdict = trend_verdict(values)
    assert verdict.verdict == expected, verdict.rule
    assert "bootstrap" in verdict.rule
    assert verdict.min_layer == int(np.argmin(values.mean(0)))


def test_trend_verdict_false_turns_are_rare():
    """Searching the best interior layer is corrected: a flat tail rarely looks like a turn."""
    shape = np.maximum(5.0 - 0.6 * LAYERS, 2.0)
    verdicts = [trend_verdict(curves(shape, seed=s), n_boot=1000).verdict for s in range(40)]
    assert verdicts.count("falls then rises") <= 4  # at most ~5% expected at level 0.95
    assert verdicts.count("falls") >= 36


def test_trend_verdict_is_unclear_when_noise_swamps_the_shape():
    values = curves(0.05 * (LAYERS - 6.0) ** 2, n_utt=10, noise=5.0)
    assert trend_verdict(values, n_boot=1000).verdict == "unclear"


def test_trend_verdict_from_means_and_intervals():
    means = 0.05 * (LAYERS - 6.0) ** 2
    tight = (means - 0.1, means + 0.1)
    loose = (means - 2.0, means + 2.0)
    assert trend_verdict(means, ci=tight).verdict == "falls then rises"
    assert trend_verdict(means, ci=loose).verdict == "unclear"
    assert "non-overlapping" in trend_verdict(means, ci=tight).rule
    assert trend_verdict(5.0 - 0.3 * LAYERS).verdict == "falls"
    assert trend_verdict(np.full(12, 3.0)).verdict == "unclear"
    assert "means only" in trend_verdict(np.full(12, 3.0)).rule


def test_trend_verdict_validation():
    with pytest.raises(ValueError, match="3 layers"):
        trend_verdict([1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        trend_verdict([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="level"):
        trend_verdict(curves([3, 2, 1]), level=1.5)
    with pytest.raises(ValueError, match="ci"):
        trend_verdict(curves([3, 2, 1]), ci=(np.zeros(3), np.ones(3)))


def test_near_log_n():
    n = np.array([100, 100, 100, 400, 400])
    estimates = np.array([1.0, math.log(100) - 0.6, math.log(100) - 0.4, 7.0, np.nan])
    flags = near_log_n(estimates, n, margin=0.5)
    assert flags.tolist() == [False, False, True, True, False]
    with pytest.raises(ValueError, match="same shape"):
        near_log_n(estimates, n[:3])
    with pytest.raises(ValueError, match="margin"):
        near_log_n(estimates, n, margin=-1)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    from analysis.stats import spearman

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 12).astype(float)
        b = a + rng.normal(0, 1.5, 12)
        assert spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1, 2, 3])
