"""Tests of the batched MI engine (analysis.engine, analysis.stacked_critics,
analysis.chunking) and its random streams (analysis.rng).

The reference is the plain one-pair loop ``analysis.mi.estimate_mi`` (torch.nn
modules, torch.optim.Adam). With the same seed and the same sampled batches the
batched trajectories must agree with it to floating-point tolerance: 1e-9 nats in
float64, 1e-4 nats in float32 on CPU.
"""

import math

import numpy as np
import pytest
import torch

from analysis import chunking, stacked_critics
from analysis.bounds import make_bound
from analysis.engine import estimate_mi_batched
from analysis.mi import ESTIMATORS, estimate_mi, resolve_options
from analysis.rng import ProblemRandom, derive_seed, hash32

SMALL = dict(hidden=(8, 8), epochs=3, batch_size=16, lr=1e-2, ema_alpha=0.3, dtype=torch.float64)
# Shorter than one batch, exactly one batch, one frame over, several batches, two frames.
LENGTHS = [5, 16, 17, 40, 33, 2]


def make_problems(lengths=LENGTHS, dx=3, dy=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for n in lengths:
        x = torch.randn(n, dx, generator=g, dtype=dtype)
        mix = torch.randn(dx, dy, generator=g, dtype=dtype)
        xs.append(x)
        ys.append(x @ mix + torch.randn(n, dy, generator=g, dtype=dtype))
    return xs, ys


def loop_estimates(xs, ys, estimator, seeds=None, **kwargs):
    seeds = seeds or [kwargs.pop("seed", 0)] * len(xs)
    return np.array([estimate_mi(x, y, estimator, seed=s, **kwargs) for x, y, s in zip(xs, ys, seeds)])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_batched_equals_single_pair_loop_float64(estimator):
    xs, ys = make_problems()
    ref = loop_estimates(xs, ys, estimator, **SMALL)
    result = estimate_mi_batched(xs, ys, estimator=estimator, progress=False, **SMALL)
    np.testing.assert_allclose(result.estimates, ref, rtol=0, atol=1e-9)
    assert np.ptp(ref) > 1e-3  # the problems differ, so equality is not trivial


def test_batched_equals_single_pair_loop_float32():
    # In float32 the two implementations round differently (summation order); Adam
    # turns sign flips of near-zero gradients into full steps of size lr, so the
    # trajectories stay within float tolerance only at moderate learning rates
    # (at lr=1e-2 they drift apart by ~1e-3 nats; in float64 they agree to 1e-12).
    xs, ys = make_problems(dtype=torch.float32)
    kwargs = dict(SMALL, dtype=torch.float32, lr=1e-3, epochs=10)
    ref = loop_estimates(xs, ys, "mine", **kwargs)
    result = estimate_mi_batched(xs, ys, progress=False, **kwargs)
    np.testing.assert_allclose(result.estimates, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("estimator", ["mine", "infonce", "mine-ema"])
def test_chunk_boundaries_do_not_change_estimates(estimator):
    xs, ys = make_problems()
    whole = estimate_mi_batched(xs, ys, estimator=estimator, progress=False, **SMALL).estimates
    for limit in (1, 2, 4):
        chunked = estimate_mi_batched(xs, ys, estimator=estimator, max_pairs_per_chunk=limit, progress=False,
                                      **SMALL).estimates
        np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12)
    tiny_budget = estimate_mi_batched(xs, ys, estimator=estimator, memory_budget_bytes=1, progress=False,
                                      **SMALL).estimates
    np.testing.assert_allclose(tiny_budget, whole, rtol=0, atol=1e-12)


def test_padding_is_never_data():
    """Padded inputs give the unpadded estimates, even with NaN or huge padding values."""
    xs, ys = make_problems()
    ref = estimate_mi_batched(xs, ys, progress=False, **SMALL).estimates
    n_max = max(LENGTHS) + 7
    for fill in (float("nan"), 1e6):
        xp = torch.full((len(xs), n_max, 3), fill, dtype=torch.float64)
        yp = torch.full((len(xs), n_max, 2), fill, dtype=torch.float64)
        for k, (x, y) in enumerate(zip(xs, ys)):
            xp[k, :len(x)], yp[k, :len(y)] = x, y
        padded = estimate_mi_batched(xp, yp, lengths=torch.tensor(LENGTHS), progress=False, **SMALL)
        np.testing.assert_allclose(padded.estimates, ref, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(padded.n_frames, LENGTHS)


def test_same_pair_twice_in_one_call_gives_identical_results():
    """Fresh critic per problem: position and neighbours do not matter."""
    xs, ys = make_problems()
    a_then_b = estimate_mi_batched([xs[3], xs[4], xs[3]], [ys[3], ys[4], ys[3]], progress=False, **SMALL)
    b_then_a = estimate_mi_batched([xs[4], xs[3]], [ys[4], ys[3]], progress=False, **SMALL)
    assert a_then_b.estimates[0] == pytest.approx(a_then_b.estimates[2], abs=1e-12)
    assert a_then_b.estimates[0] == pytest.approx(b_then_a.estimates[1], abs=1e-12)
    assert a_then_b.estimates[1] == pytest.approx(b_then_a.estimates[0], abs=1e-12)


def test_shared_x_units_equal_separate_copies():
    """Layers of one utterance share x (one unit); copies of x train the same."""
    g = torch.Generator().manual_seed(1)
    xs, ys = [], []
    for n in (40, 17, 40):
        x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        for layer in range(3):
            xs.append(x)
            ys.append(0.3 * (layer + 1) * x[:, :2] + torch.randn(n, 2, generator=g, dtype=torch.float64))
    shared = estimate_mi_batched(xs, ys, estimator="mine", progress=False, **SMALL).estimates
    copies = estimate_mi_batched([x.clone() for x in xs], ys, estimator="mine", progress=False, **SMALL).estimates
    ref = loop_estimates(xs, ys, "mine", **SMALL)
    np.testing.assert_allclose(shared, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(copies, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_shared_x_units_of_every_estimator_equal_the_loop(estimator):
    """Units of 3 layers; the longest unit has a 4th batch alone (a step of one unit)."""
    g = torch.Generator().manual_seed(2)
    xs, ys = [], []
    for n in (50, 17, 40):
        x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        for layer in range(3):
            xs.append(x)
            ys.append(0.3 * (layer + 1) * x[:, :2] + torch.randn(n, 2, generator=g, dtype=torch.float64))
    result = estimate_mi_batched(xs, ys, estimator=estimator, progress=False, **SMALL).estimates
    np.testing.assert_allclose(result, loop_estimates(xs, ys, estimator, **SMALL), rtol=0, atol=1e-9)


def test_precision_is_checked():
    xs, ys = make_problems()
    with pytest.raises(ValueError, match="precision must be one of"):
        estimate_mi_batched(xs, ys, precision="fp16", progress=False, **SMALL)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="precision='bf16' needs a CUDA device"):
            estimate_mi_batched(xs, ys, precision="bf16", progress=False, **SMALL)
    with pytest.raises(ValueError, match="precision='tf32' needs a CUDA device and dtype torch.float32"):
        estimate_mi_batched(xs, ys, precision="tf32", device="cuda", progress=False, **SMALL)  # float64


def test_per_problem_seeds():
    xs, ys = make_problems()
    seeds = [3, 7, derive_seed(0, "utt-1"), 0, 2 ** 40 + 1, 9]
    result = estimate_mi_batched(xs, ys, seeds=seeds, progress=False, **SMALL)
    ref = loop_estimates(xs, ys, "mine", seeds=seeds, **SMALL)
    np.testing.assert_allclose(result.estimates, ref, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(result.seeds.astype(np.int64), seeds)
    default = estimate_mi_batched(xs, ys, progress=False, **SMALL)
    assert np.abs(default.estimates - result.estimates).max() > 1e-4


def test_mixed_feature_dimensions():
    xs, ys = make_problems([12, 30], dx=3, dy=2)
    xs2, ys2 = make_problems([25], dx=5, dy=1, seed=1)
    xs, ys = xs + xs2, ys + ys2
    result = estimate_mi_batched(xs, ys, progress=False, **SMALL)
    np.testing.assert_allclose(result.estimates, loop_estimates(xs, ys, "mine", **SMALL), rtol=0, atol=1e-9)


def test_short_problems_raise_or_skip():
    xs, ys = make_problems([10, 1, 20])
    with pytest.raises(ValueError, match="min_frames"):
        estimate_mi_batched(xs, ys, progress=False, **SMALL)
    result = estimate_mi_batched(xs, ys, on_short="skip", progress=False, **SMALL)
    assert np.isnan(result.estimates[1]) and result.skipped.tolist() == [False, True, False]
    ref = loop_estimates([xs[0], xs[2]], [ys[0], ys[2]], "mine", **SMALL)
    np.testing.assert_allclose(result.estimates[[0, 2]], ref, rtol=0, atol=1e-9)


def test_validation_names_the_problem():
    xs, ys = make_problems()
    bad = [y.clone() for y in ys]
    bad[2][1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"y\[2\] contains NaN"):
        estimate_mi_batched(xs, bad, progress=False, **SMALL)
    with pytest.raises(ValueError, match="problem 1"):
        estimate_mi_batched(xs, [ys[0], ys[1][:-1]] + ys[2:], progress=False, **SMALL)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_mi_batched(xs, ys, estimator="mi", progress=False)
    with pytest.raises(ValueError, match="max_pairs_per_chunk"):
        estimate_mi_batched(xs, ys, max_pairs_per_chunk=0, progress=False)
    with pytest.raises(ValueError, match="on_short"):
        estimate_mi_batched(xs, ys, on_short="ignore", progress=False)
    with pytest.raises(ValueError, match="lengths"):
        estimate_mi_batched(torch.zeros(2, 5, 3), torch.zeros(2, 5, 2), progress=False)


def test_result_fields_and_progress_reporting():
    xs, ys = make_problems()
    result = estimate_mi_batched(xs, ys, progress=True, **SMALL)
    assert len(result) == len(LENGTHS)
    np.testing.assert_array_equal(result.n_frames, LENGTHS)
    np.testing.assert_allclose(result.log_n, np.log(LENGTHS))
    assert result.near_log_n(margin=0.0).dtype == bool
    assert result.estimator == "mine" and result.device == "cpu" and result.seconds > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cuda_engine_equals_cpu_loop(estimator):
    xs, ys = make_problems(lengths=[5, 130, 17, 300])
    kwargs = dict(SMALL, batch_size=128)
    ref = loop_estimates(xs, ys, estimator, device="cpu", **kwargs)
    result = estimate_mi_batched(xs, ys, estimator=estimator, device="cuda", progress=False, **kwargs)
    np.testing.assert_allclose(result.estimates, ref, rtol=0, atol=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_precisions_follow_float32():
    """tf32 and bf16 train the same problems; their estimates stay near float32's."""
    xs, ys = make_problems(lengths=[130, 300, 257, 90], dx=48, dy=32, dtype=torch.float32)
    kwargs = dict(SMALL, dtype=torch.float32, hidden=(32, 32), epochs=10, lr=1e-3, batch_size=64, device="cuda",
                  progress=False)
    reference = estimate_mi_batched(xs, ys, **kwargs).estimates
    for precision, tolerance in (("tf32", 0.02), ("bf16", 0.1)):
        fast = estimate_mi_batched(xs, ys, precision=precision, **kwargs).estimates
        assert np.all(np.isfinite(fast))
        np.testing.assert_allclose(fast, reference, rtol=0, atol=tolerance)
    assert torch.backends.cuda.matmul.fp32_precision != "tf32"  # restored after the call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", ["mine", "mine-ema", "infonce"])
def test_cuda_training_epochs_make_no_host_synchronisation(estimator):
    xs, ys = make_problems(lengths=[130, 40, 77], dtype=torch.float32)
    opts = resolve_options(None, **dict(SMALL, dtype=torch.float32, device="cuda"))
    problems = [chunking.Problem(x, y, chunking.memory_key(x), 0) for x, y in zip(xs, ys)]
    (units, group), = chunking.plan_chunks(problems, range(len(problems)), estimator == "infonce", opts, 2 ** 30, None)
    chunk, _ = chunking.load_chunk(problems, units, group, torch.device("cuda"), opts, torch.float32)
    rng, critics = stacked_critics.prepare_training(chunk, opts)
    bound = make_bound(estimator, opts)
    state = bound.initial_state(len(problems), opts.dtype, rng.device)
    state = stacked_critics.train_epoch(chunk, rng, critics, bound, state, 0, opts)  # warm-up (Adam state, cuBLAS)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for epoch in (1, 2):
            state = stacked_critics.train_epoch(chunk, rng, critics, bound, state, epoch, opts)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(stacked_critics.evaluate(chunk, rng, critics.params, bound, opts)).all()


# ----------------------------------------------------------------------------- RNG


def test_hash_matches_on_ints_and_tensors_and_is_stable():
    values = [0, 1, 12345, 2 ** 32 - 1]
    from_ints = [hash32(v) for v in values]
    from_tensor = hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert from_ints == from_tensor
    assert all(0 <= h < 2 ** 32 for h in from_ints)
    assert len(set(from_ints)) == len(values)
    # Stored reference values: changing the generator would change every estimate.
    assert from_ints[:2] == [0, 1753845952]
    assert derive_seed(0, "utt") == derive_seed(0, "utt") != derive_seed(1, "utt")


def test_epoch_orders_and_partners_are_valid_and_padding_independent():
    lengths, b = [5, 16, 37, 1], 16
    wide = ProblemRandom([0, 1, 2, 3], lengths, 48, "cpu")
    for epoch in range(3):
        order, partner = wide.epoch(epoch, b)
        for k, n in enumerate(lengths):
            assert sorted(order[k, :n].tolist()) == list(range(n))
            assert sorted(partner[k, :n].tolist()) == list(range(n))
            # Partners stay inside their mini-batch.
            assert torch.equal(partner[k, :n] // b, torch.arange(n) // b)
            alone_order, alone_partner = ProblemRandom([k], [n], n, "cpu").epoch(epoch, b)
            assert torch.equal(alone_order[0], order[k, :n])
            assert torch.equal(alone_partner[0], partner[k, :n])
    first, _ = wide.epoch(0, b)
    second, _ = wide.epoch(1, b)
    assert not torch.equal(first[2], second[2])  # a new shuffle every epoch


def test_marginal_partners_are_uniform_within_a_batch():
    """Each position's partner is uniform over its batch (chi-square-like check)."""
    rng = ProblemRandom([0], [8], 8, "cpu")
    counts = np.zeros((8, 8))
    for epoch in range(4000):
        _, partner = rng.epoch(epoch, 8)
        counts[np.arange(8), partner[0].numpy()] += 1
    assert np.abs(counts / 4000 - 1 / 8).max() < 0.03


def test_initial_weights_follow_the_linear_default_bound():
    rng = ProblemRandom([0, 0, 5], [10, 20, 10], 20, "cpu")
    weight, bias = rng.init_linear(0, 64, 100)
    assert weight.shape == (3, 100, 64) and bias.shape == (3, 100)
    bound = 1 / math.sqrt(64)
    assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
    assert torch.equal(weight[0], weight[1]) and not torch.equal(weight[0], weight[2])
    assert abs(float(weight.mean())) < 0.01


def test_row_permutation_gradient_is_the_inverse_gather():
    gen = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.randperm(6, generator=gen) for _ in range(3)])  # (K, b)
    inverse = torch.argsort(perm, dim=1)
    t = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    out = stacked_critics._PermuteRows.apply(t, perm, inverse)
    torch.testing.assert_close(out, torch.stack([t[k, perm[k]] for k in range(3)]), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda x: stacked_critics._PermuteRows.apply(x, perm, inverse), (t,))
