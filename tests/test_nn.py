"""The torch backend on its own: module algebra, sparsifiers and the training loop."""

import contextlib
import copy
import math
from functools import partial

import numpy as np
import pytest
import torch

from sksae._nn import module, training
from sksae._nn.batches import DenseRows, map_rows, rows_per_chunk
from sksae._nn.module import SparseAutoencoder, geometric_median
from sksae._nn.sparsifiers import (
    _GOLDEN_RATIO,
    BatchTopK,
    Code,
    JumpReLU,
    ReLU,
    TopK,
    _Entries,
    _rounded_down,
    _rounded_up,
    _zero_at_or_below,
    count_true,
)
from sksae._nn.training import (
    AuxK,
    GradientOverflow,
    Schedule,
    Trainer,
    TrainingDiverged,
    evaluate_fvu,
)


def _model(sparsifier, n_features=6, n_latents=20, seed=0, device="cpu"):
    model = SparseAutoencoder(n_features, n_latents, sparsifier, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    model.reset_parameters(generator, b_dec=torch.randn(n_features, generator=generator))
    with torch.no_grad():
        model.b_enc.normal_(generator=generator)
    return model.to(device)


def test_pre_activation_is_the_textbook_encoder():
    model = _model(ReLU())
    x = torch.randn(7, 6, dtype=torch.float64)
    textbook = (x - model.b_dec) @ model.W_enc.T + model.b_enc
    torch.testing.assert_close(model.pre_activation(x), textbook)


@pytest.mark.parametrize("sparsifier", [ReLU(), TopK(k=4)], ids=["dense", "sparse"])
def test_the_encoder_keeps_float32_precision_on_data_far_from_the_origin(sparsifier):
    """Rows at 1000 per coordinate with unit spread, around ``b_dec``: the float32
    pre-activations and encoder gradients (of the dense code's backward pass, and of the
    sparse code's selected entries) stay within float32 rounding of the float64 ones.
    With ``b_dec`` folded into the bias the pre-activations were about 1000 times
    further, and the gradients 10 times."""
    generator = torch.Generator().manual_seed(0)
    n_features, n_latents = 256, 512
    centre = 1000 * torch.randn(n_features, generator=generator, dtype=torch.float64).sign()
    x = (centre + torch.randn(64, n_features, generator=generator, dtype=torch.float64)).float()
    models = {}
    for dtype in (torch.float32, torch.float64):
        models[dtype] = SparseAutoencoder(
            n_features, n_latents, copy.deepcopy(sparsifier), dtype=dtype
        )
        models[dtype].reset_parameters(torch.Generator().manual_seed(1), b_dec=centre)
    assert models[torch.float32].sparsifier.trains_sparse(n_latents) == (
        isinstance(sparsifier, TopK)
    )
    results = {}
    for dtype, model in models.items():
        trainer = Trainer(model, learning_rate=1e-3, alpha=0.01)
        loss = trainer.loss(x.to(dtype))[0]
        grads = torch.autograd.grad(loss, [model.W_enc, model.b_enc, model.b_dec])
        results[dtype] = [model.pre_activation(x.to(dtype)).detach(), *grads]
    pre_error, *grad_errors = (
        (low.double() - exact).norm() / exact.norm()
        for low, exact in zip(results[torch.float32], results[torch.float64], strict=True)
    )
    assert pre_error < 1e-5  # 2.6e-4 folded
    # Within the float32 rounding of the reconstructions (3e-5 of a unit residual at
    # 1000): up to 6.6e-4 folded.
    assert max(grad_errors) < 1.5e-4


# The input is centred before the product and before its cast to the buffer's dtype.
@pytest.mark.parametrize("out_dtype", [torch.float64, torch.float32])
def test_pre_activation_into_a_buffer_has_the_textbook_gradients(out_dtype):
    model = _model(ReLU())
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(7, 20, dtype=torch.float64)
    parameters = (x, model.W_enc, model.b_enc, model.b_dec)
    textbook = (x - model.b_dec) @ model.W_enc.T + model.b_enc
    expected = torch.autograd.grad((textbook * weights).sum(), parameters)
    pre = model.pre_activation(x, out=torch.empty(7, 20, dtype=out_dtype))
    assert pre.dtype == out_dtype
    torch.testing.assert_close(pre, textbook.to(out_dtype))
    grads = torch.autograd.grad((pre * weights.to(out_dtype)).sum(), parameters)
    for grad, want in zip(grads, expected, strict=True):
        assert grad.dtype == torch.float64
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "sparsifier",
    [ReLU(), TopK(k=2), BatchTopK(k=2, threshold=torch.tensor(0.1)), JumpReLU(20, 0.1)],
    ids=["relu", "topk", "batchtopk", "jumprelu"],
)
def test_inference_codes_need_no_grad_mode(sparsifier):
    model = _model(sparsifier)
    x = torch.randn(7, 6, dtype=torch.float64)
    code = model.encode(x)  # with autograd on, as a user's own loop may be
    assert not code.values.requires_grad
    with torch.no_grad():
        expected = sparsifier.encode((x - model.b_dec) @ model.W_enc.T + model.b_enc)
    torch.testing.assert_close(code.to_dense(20), expected.to_dense(20))


def test_sparse_decode_equals_dense_decode_with_gradients():
    model = _model(TopK(k=3))
    x = torch.randn(7, 6, dtype=torch.float64)
    x_hat, code = model(x)
    dense = model.decode(Code(code.to_dense(model.n_latents)))
    torch.testing.assert_close(x_hat, dense)
    (grad_sparse,) = torch.autograd.grad(x_hat.square().sum(), model.W_dec, retain_graph=True)
    (grad_dense,) = torch.autograd.grad(dense.square().sum(), model.W_dec)
    torch.testing.assert_close(grad_sparse, grad_dense)


def test_topk_keeps_the_k_largest_positive_preactivations():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-1.0, -2.0, -3.0, 0.1]])
    dense = TopK(k=2)(pre).to_dense(4)
    expected = torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.1]])
    torch.testing.assert_close(dense, expected)


def test_relu_penalty_weights_codes_by_decoder_norms():
    code = ReLU()(torch.tensor([[1.0, -2.0, 3.0], [0.0, 4.0, 0.0]]))
    # The mean over rows of sum_i h_i ||W_dec[i]||: (1 * 2 + 3 * 0.5 + 4 * 5) / 2.
    assert ReLU().penalty(code, torch.tensor([2.0, 5.0, 0.5])).item() == pytest.approx(11.75)
    assert TopK(k=1).penalty(code, torch.ones(3)) is None


def test_jumprelu_straight_through_gradients_follow_the_paper(device):
    bandwidth = 0.1
    sparsifier = JumpReLU(n_latents=3, bandwidth=bandwidth, threshold=torch.tensor([0.5, 1.0, 2.0]))
    sparsifier.to(device)
    # Latent 0: 0.52 is within half a bandwidth above its threshold, 0.3 is not;
    # latent 1: 0.97 is within half a bandwidth below; latent 2: nothing near 2.0.
    pre = torch.tensor(
        [[0.52, 0.97, 0.0], [0.3, 3.0, 1.0]], dtype=torch.float64, device=device, requires_grad=True
    )
    # The code is written over its input, which a leaf cannot be.
    code = sparsifier(pre.clone())
    torch.testing.assert_close(
        code.values.detach().cpu(),
        torch.tensor([[0.52, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64),
    )
    assert code.fired.tolist() == [1, 1, 0]  # the rows each latent fired on, counted alongside
    code.values.sum().backward()
    # dh/dtheta = -(theta / eps) K((pre - theta) / eps), summed over rows; dh/dpre = H(pre - theta).
    expected_threshold_grad = torch.tensor(
        [-0.5 / bandwidth, -1.0 / bandwidth, 0.0], dtype=torch.float64
    )
    torch.testing.assert_close(sparsifier.threshold.grad.cpu(), expected_threshold_grad)
    torch.testing.assert_close(
        pre.grad.cpu(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    )

    sparsifier.threshold.grad = None
    pre.grad = None
    code = sparsifier(pre.clone())
    penalty = sparsifier.penalty(code, decoder_norms=None)
    assert penalty.item() == pytest.approx(1.0)  # two active entries over two rows
    penalty.backward()
    # dL0/dtheta = -(1 / eps) K(...), divided by the bandwidth once, averaged over rows;
    # the L0 term sends no gradient to the pre-activations.
    expected = torch.tensor([-1.0 / bandwidth, -1.0 / bandwidth, 0.0], dtype=torch.float64) / 2
    torch.testing.assert_close(sparsifier.threshold.grad.cpu(), expected)
    assert pre.grad is None


def test_jumprelu_thresholds_start_at_the_bandwidth_exactly():
    # Not at its float32 rounding, 0.0010000000474974513.
    threshold = JumpReLU(n_latents=3, bandwidth=1e-3).threshold
    assert threshold.dtype == torch.float64 and threshold.tolist() == [1e-3] * 3


def test_jumprelu_window_is_exact_around_a_large_threshold():
    # Around 1000, float32 values are 6e-5 apart: bounds 1000 -+ 5e-4 rounded to nearest
    # would take in or leave out the values next to the window's edges.
    bandwidth, threshold = 1e-3, torch.tensor([1000.0])
    sparsifier = JumpReLU(n_latents=1, bandwidth=bandwidth, threshold=threshold)
    pre = (1000.0 + torch.linspace(-1e-3, 1e-3, 4001, dtype=torch.float64)).float()[:, None]
    sparsifier.penalty(sparsifier(pre.clone()), decoder_norms=None).backward()
    in_window = ((pre.double() - 1000.0).abs() < bandwidth / 2).sum()
    expected = -in_window / (len(pre) * bandwidth)
    assert sparsifier.threshold.grad.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bounds_round_outwards_to_the_nearest_number_of_the_dtype(dtype):
    # Every bfloat16 value, its float32 neighbours, and values of every magnitude: the
    # bound must be the number of ``dtype`` next to the value on its side (past 256 in
    # bfloat16, stepping "towards value - 1" would not move).
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = every.view(torch.bfloat16).float()
    values = values[values.isfinite()]
    inf = torch.tensor(math.inf)
    values = torch.cat([values, torch.nextafter(values, inf), torch.nextafter(values, -inf)])
    # And float64 values between float32 ones, small to large.
    scales = torch.tensor([1e-30, 1.0, 1e6, 1e30], dtype=torch.float64)
    between = torch.randn(4, 2500, dtype=torch.float64) * scales[:, None]
    values = torch.cat([values[values.isfinite()].double(), between.flatten()])
    down, up = _rounded_down(values, dtype), _rounded_up(values, dtype)
    assert down.dtype == up.dtype == dtype
    assert (down.double() <= values).all() and (up.double() >= values).all()
    assert (torch.nextafter(down, down.new_tensor(math.inf)).double() > values).all()
    assert (torch.nextafter(up, up.new_tensor(-math.inf)).double() < values).all()


def test_jumprelu_offsets_span_one_bfloat16_spacing_and_follow_the_trainer():
    thresholds = torch.tensor([0.0, 1e-3, 0.3, 1.0, 1.5, 300.0])
    sparsifier = JumpReLU(6, bandwidth=1e-3)
    sparsifier.training_step = 1
    offsets = sparsifier._dither(thresholds, torch.bfloat16)
    positive = thresholds > 0
    spacing = torch.where(positive, torch.exp2(torch.log2(thresholds).floor()) * 2**-7, 0)
    torch.testing.assert_close(offsets, (math.fmod(_GOLDEN_RATIO, 1) - 0.5) * spacing)

    # The offsets are indexed by the optimiser's step, which a resumed trainer
    # continues: partial_fit makes a new trainer, and a new sparsifier, at each call.
    seen = []

    class Recording(JumpReLU):
        def forward(self, pre):
            seen.append(self.training_step)
            return super().forward(pre)

    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    first = Trainer(_model(Recording(20, bandwidth=0.1)), learning_rate=1e-3, alpha=0.1)
    first.step(x)
    first.step(x)
    resumed = _model(Recording(20, bandwidth=0.1))
    Trainer(resumed, learning_rate=1e-3, alpha=0.1, state=first.state_dict()).step(x)
    assert seen == [0, 1, 2]


def test_jumprelu_refuses_negative_thresholds():
    with pytest.raises(ValueError, match=r"non-negative; got -0\.5"):
        JumpReLU(2, bandwidth=0.1, threshold=torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n_rows", [0, 1, 300])
def test_zeroing_below_the_bounds_is_torch_where_bit_for_bit(dtype, n_rows, device):
    # Blocks of 256 rows on the CPU: 300 rows end in a partial block. Entries equal to
    # their bound, signed zeros, infinities and NaN must come out as torch.where's.
    generator = torch.Generator().manual_seed(0)
    pre = torch.randn(n_rows, 7, generator=generator).to(dtype)
    bounds = torch.tensor([0.0, 0.1, 0.5, 1.0, 0.0, 2.0, 0.3], dtype=dtype)
    specials = torch.tensor([-0.0, 0.1, math.inf, -math.inf, math.nan, 2.0, 0.0], dtype=dtype)
    pre[: min(n_rows, 1)] = specials
    pre, bounds = pre.to(device), bounds.to(device)
    expected = torch.where(pre > bounds, pre, 0)
    counts = torch.ones(7, device=device)  # the counts are added to what is there
    zeroed = _zero_at_or_below(pre.clone(), bounds, counts=counts)
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}
    assert torch.equal(zeroed.view(bits[dtype]), expected.view(bits[dtype]))
    assert counts.tolist() == (1 + (pre > bounds).sum(dim=0)).tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n_rows", [0, 300])
def test_window_entries_sum_alike_as_indices_and_as_a_mask(dtype, n_rows):
    # The CPU keeps a window's entries as indices, found by blocks of 256 rows (300 rows
    # end in a partial block), an accelerator as the mask itself; both forms are built
    # here on the CPU and must give the same entries, sums and counts. Values equal to a
    # bound are outside.
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(n_rows, 7, generator=generator).to(dtype)
    low = torch.tensor([-0.5, 0.0, 1.0, -3.0, 0.2, 0.3, 9.0], dtype=dtype)
    high = low + 0.25
    if n_rows:
        values[:2] = torch.stack([low, high])
    mask = (values > low) & (values < high)
    as_indices = _Entries.between(values, low, high)
    as_mask = _Entries(count_true(mask), mask=mask)
    assert as_indices.mask is None
    rows, columns = mask.nonzero(as_tuple=True)
    assert torch.equal(as_indices.rows, rows) and torch.equal(as_indices.columns, columns)
    expected = (values.double() * mask).sum(dim=0)
    torch.testing.assert_close(as_indices.column_sums(values, torch.float64), expected)
    torch.testing.assert_close(as_mask.column_sums(values, torch.float64), expected)
    assert as_indices.counts.tolist() == as_mask.counts.tolist() == mask.sum(dim=0).tolist()
    assert n_rows == 0 or mask.any()  # the test has entries to find


@pytest.mark.parametrize("n_rows", [0, 1, 254, 255, 256, 510, 4096])
def test_count_true_counts_columns_past_a_byte(n_rows):
    # Columns all true, all false and mixed; 255-row blocks are summed in uint8, so a
    # count past 255 that wrapped around would show.
    rng = np.random.default_rng(n_rows)
    mask = torch.from_numpy(rng.random((n_rows, 5)) < [1.0, 0.0, 0.5, 0.99, 0.01])
    counts = count_true(mask)
    assert counts.dtype == torch.int32
    assert counts.tolist() == mask.sum(dim=0).tolist()


def test_batchtopk_shares_the_budget_over_the_batch_and_tracks_its_threshold():
    sparsifier = BatchTopK(k=2)
    pre = torch.tensor([[5.0, 4.0, 3.0, -1.0], [0.5, 0.2, -1.0, -2.0]])
    dense = sparsifier(pre).values
    torch.testing.assert_close(dense, torch.tensor([[5.0, 4.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.0]]))
    assert sparsifier.threshold.item() == 0.5  # the first batch sets it outright
    # Then the newest batch weighs 4 / (t + 4) at step t, and 0.01 from step 396 on.
    sparsifier.training_step = 1
    sparsifier(torch.tensor([[9.0, 8.0, 7.0, 6.0], [1.0, 1.0, 1.0, 1.0]]))
    assert sparsifier.threshold.item() == pytest.approx(0.2 * 0.5 + 0.8 * 6.0)
    sparsifier.training_step = 1000
    sparsifier(torch.tensor([[9.0, 8.0, 7.0, 6.0], [1.0, 1.0, 1.0, 1.0]]))
    assert sparsifier.threshold.item() == pytest.approx(0.99 * 4.9 + 0.01 * 6.0)
    assert sparsifier.threshold.dtype == torch.float64
    # Inference: each row on its own, through the threshold.
    torch.testing.assert_close(
        sparsifier.encode(torch.tensor([[5.0, 4.0, -3.0, 7.0]])).values,
        torch.tensor([[5.0, 0.0, 0.0, 7.0]]),
    )
    # Compared with the float64 threshold itself: the float32 nearest to 0.3 is above it.
    sparsifier.threshold.fill_(0.3)
    assert torch.tensor(0.3, dtype=torch.float32).double() > 0.3
    pre = torch.tensor([[0.3, 0.29, 0.31]], dtype=torch.float32)
    expected = pre * torch.tensor([1.0, 0.0, 1.0])
    assert torch.equal(sparsifier.encode(pre.clone()).values, expected)


def _batch_top_reference(pre, k):
    """BatchTopK's training code by its definition: a top-k over the whole batch."""
    activations = torch.relu(pre).flatten()
    values, indices = activations.topk(k * pre.shape[0])
    return torch.zeros_like(activations).scatter(0, indices, values).view_as(pre)


def test_batchtopk_selects_the_batch_top_from_row_candidates_or_all_values():
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(64, 256, dtype=torch.float64, generator=generator)
    concentrated = spread.clone()
    concentrated[3] += 10.0  # one row holds all of the batch's top, far beyond its candidates
    negative = -spread.abs()
    negative[0, :5] = 1.0  # fewer positive values than the batch keeps
    # One sparsifier sees the batches in turn: each but the first first tries a bound
    # from the previous batch's cutoff, which the shifted batches defeat (too few values
    # above it) or loosen (most values above it). A fresh one, without a previous cutoff,
    # selects from each row's candidates, and then from all the values at or above the
    # smallest of their top: the concentrated batch's top is not among the candidates.
    shared = BatchTopK(k=2)
    batches = [spread, spread.flip(0), concentrated, negative, spread / 2, spread * 4]
    for pre in batches:
        pre = pre.detach().requires_grad_(True)
        expected = _batch_top_reference(pre, k=2)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), pre)
        for sparsifier in [shared, BatchTopK(k=2)]:
            code = sparsifier(pre.clone()).values  # written over its input: not a leaf
            torch.testing.assert_close(code, expected, rtol=0, atol=0)
            (grad,) = torch.autograd.grad(code.square().sum(), pre)
            torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


def test_unit_norm_step_keeps_rows_on_the_sphere_and_projects_the_gradient():
    model = _model(TopK(k=3))
    model.normalize_decoder()
    x = torch.randn(32, 6, dtype=torch.float64)
    x_hat, _ = model(x)
    (x - x_hat).square().sum().backward()
    model.remove_parallel_decoder_grad()
    parallel = (model.W_dec.grad * model.W_dec).sum(dim=1)
    torch.testing.assert_close(parallel, torch.zeros_like(parallel))
    Trainer(model, learning_rate=1e-2).step(x)
    torch.testing.assert_close(model.decoder_norms(), torch.ones(20, dtype=torch.float64))


@pytest.mark.parametrize(
    "sparsifier",
    # A bandwidth, and so initial thresholds, large enough for pre-activations between
    # them and their scaled values.
    [TopK(k=2), BatchTopK(k=2), JumpReLU(40, 0.1)],
    ids=["topk", "batchtopk", "jumprelu"],
)
def test_the_encoder_scale_best_reconstructs_the_sample(sparsifier, monkeypatch):
    model = SparseAutoencoder(6, 40, sparsifier, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(300, 6, generator=generator, dtype=torch.float64) + 1.0
    model.reset_parameters(generator, b_dec=sample.mean(dim=0))
    tied = copy.deepcopy(model)
    monkeypatch.setattr(module, "rows_per_chunk", lambda n_features: 70)  # sums over 5 chunks
    model.scale_encoder_(sample)
    factor = (model.W_enc / tied.W_enc).detach()
    torch.testing.assert_close(factor, torch.full_like(factor, factor[0, 0]))  # one factor
    # The least-squares factor of the tied codes' directions onto the centred sample
    # (BatchTopK's codes are the top of each chunk).
    probe = copy.deepcopy(tied)
    directions = torch.cat(
        [
            probe.decode_directions(probe.training_code(x, probe.pre_activation(x)))
            for x in sample.split(70)
        ]
    )
    least_squares = (directions * (sample - tied.b_dec)).sum() / directions.square().sum()
    torch.testing.assert_close(factor[0, 0], least_squares.detach(), rtol=1e-12, atol=0)
    assert factor[0, 0] < 0.9  # 40 latents over 6 features overshoot
    if isinstance(sparsifier, BatchTopK):
        assert sparsifier.threshold.isnan()  # still to be learned, not set by the probe
    # The codes the factor was fitted to, those of the tied encoder, scaled: the same
    # latents fire (JumpReLU's thresholds scale too).
    torch.testing.assert_close(
        model.training_code(sample, model.pre_activation(sample)).to_dense(40),
        factor[0, 0] * tied.training_code(sample, tied.pre_activation(sample)).to_dense(40),
    )

    def squared_error(scale):
        scaled = copy.deepcopy(sparsifier)
        scaled.scale_latents_(torch.full((40,), scale, dtype=torch.float64))
        encoder = SparseAutoencoder.from_tensors(
            scaled,
            W_enc=model.W_enc * scale,
            b_enc=model.b_enc,
            W_dec=model.W_dec,
            b_dec=model.b_dec,
        )
        code = encoder.training_code(sample, encoder.pre_activation(sample))
        return (sample - encoder.decode(code)).square().sum().item()

    # The least-squares scale: any other scales the same codes worse.
    assert squared_error(1.0) < min(squared_error(0.95), squared_error(1.05))


# Constant data, where every pre-activation is 0 and no code has a scale to fit; and ReLU,
# whose L1 penalty wants the codes to start small.
@pytest.mark.parametrize("sparsifier, offset", [(TopK(k=2), 0.0), (ReLU(), 1.0)])
def test_the_encoder_keeps_its_scale_where_none_is_sought(sparsifier, offset):
    model = SparseAutoencoder(4, 10, sparsifier, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    sample = offset * torch.randn(20, 4, generator=generator, dtype=torch.float64) + 1.0
    model.reset_parameters(generator, b_dec=torch.ones(4, dtype=torch.float64))
    tied = model.W_enc.clone()
    model.scale_encoder_(sample)
    torch.testing.assert_close(model.W_enc, tied, rtol=0, atol=0)


def test_geometric_median_is_robust_to_outliers():
    X = torch.cat([torch.randn(200, 3, dtype=torch.float64) * 0.1, torch.full((20, 3), 1e3)])
    median = geometric_median(X)
    assert median.norm() < 0.5
    assert X.mean(0).norm() > 50
    # The point of least summed distance, not a coordinate-wise median, which would be
    # (0, 0) here: the Fermat point of this triangle, (3 - sqrt(3)) / 6 on each axis.
    triangle = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    expected = (3 - math.sqrt(3)) / 6
    torch.testing.assert_close(
        geometric_median(triangle),
        torch.full((2,), expected, dtype=torch.float64),
        atol=1e-3,
        rtol=0,
    )


def test_alpha_warms_up_and_the_learning_rate_decays_on_schedule():
    schedule = Schedule(alpha_warmup_end=4, decay_start=6, decay_steps=4)
    trainer = Trainer(_model(ReLU()), learning_rate=1e-3, alpha=2.0, schedule=schedule)
    alphas, learning_rates = [], []
    for _ in range(10):
        x = torch.randn(8, 6, dtype=torch.float64)
        with torch.no_grad():  # the weight of the penalty in the objective
            _, objective, squared_error, code = trainer.loss(x)
            penalty = trainer.model.sparsifier.penalty(code, trainer.model.decoder_norms())
            alphas.append(((objective - squared_error) / penalty).item())
        trainer.step(x)
        learning_rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert alphas == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert learning_rates == pytest.approx([1e-3] * 7 + [7.5e-4, 5e-4, 2.5e-4])
    assert schedule.finished(10) and not schedule.finished(9)


def _model_with_dead_latents(n_dead=8):
    model = _model(TopK(k=2), n_features=6, n_latents=20)
    with torch.no_grad():
        model.b_dec.fill_(10.0)  # large, so that counting it twice would show
        model.b_enc[:n_dead] = -100.0  # never in the top k
    return model


def test_auxk_reconstructs_the_residual_from_dead_latents_without_b_dec():
    model = _model_with_dead_latents()
    with torch.no_grad():
        model.b_enc[:8] = 0.5  # dead by their clocks alone, with positive candidates
    trainer = Trainer(model, learning_rate=1e-3, auxk=AuxK(k=3, coef=1.0, dead_steps=5))
    trainer.steps_since_fired[:8] = 5  # the first eight latents are dead
    trainer._refresh_auxk()  # and found so by the periodic check
    x = torch.randn(16, 6, dtype=torch.float64) + 10.0
    pre = model.pre_activation(x).detach()
    residual = torch.randn(16, 6, dtype=torch.float64)

    # An independent computation: top 3 of the dead latents' pre-activations, ReLU,
    # through the decoder rows alone.
    dead_pre = pre[:, :8].numpy()
    top = np.argsort(-dead_pre, axis=1)[:, :3]
    values = np.maximum(np.take_along_axis(dead_pre, top, axis=1), 0)
    assert np.count_nonzero(values) > len(values)
    W_dec = model.W_dec.detach().numpy()
    residual_hat = np.einsum("bj,bjf->bf", values, W_dec[:8][top])
    r = residual.numpy()
    expected = np.square(r - residual_hat).sum() / np.square(r - r.mean(axis=0)).sum()
    assert trainer.aux_loss(trainer._auxk_code(x, pre), residual).item() == pytest.approx(
        expected, rel=1e-10
    )


def test_auxk_codes_the_dead_latents_wherever_they_are():
    # Dead latents spread over the dictionary, with pre-activations of both signs: each
    # row's code is its top 2 among them, under their own indices.
    model = _model(TopK(k=2))
    trainer = Trainer(model, learning_rate=1e-3, auxk=AuxK(k=2, coef=1.0, dead_steps=5))
    dead = torch.tensor([3, 7, 11, 19])
    trainer.steps_since_fired[dead] = 5
    trainer._refresh_auxk()
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pre = model.pre_activation(x).detach()
    top = pre[:, dead].topk(2, dim=1).indices
    expected = torch.zeros(16, 20, dtype=torch.float64)
    expected.scatter_(1, dead[top], torch.relu(pre[:, dead].gather(1, top)))
    assert expected.count_nonzero() >= 5  # 7: enough rows with positive candidates
    torch.testing.assert_close(trainer._auxk_code(x, pre).to_dense(20), expected)


def test_auxk_ignores_a_candidate_that_fired_since_the_check():
    model = _model(TopK(k=2))
    trainer = Trainer(model, learning_rate=1e-3, auxk=AuxK(k=8, coef=1.0, dead_steps=5))
    trainer.steps_since_fired[:8] = 5
    trainer._refresh_auxk()  # the first eight are the candidates until the next check
    trainer.steps_since_fired[:4] = 0  # and four of them have fired since
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    code = trainer._auxk_code(x, model.pre_activation(x).detach()).to_dense(20)
    assert (code[:, 4:8] > 0).any() and (code[:, :4] == 0).all()


def test_auxk_skips_a_batch_whose_residuals_do_not_spread():
    # 65 rows in batches of 64: the last batch is one row, whose residual equals its mean.
    X = torch.randn(65, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = _model_with_dead_latents()
    trainer = Trainer(model, learning_rate=1e-3, auxk=AuxK(k=3, coef=1.0, dead_steps=1))
    for _ in range(3):
        trainer.run_epoch(DenseRows(X), batch_size=64)
    for state in trainer.optimizer.state.values():
        assert all(torch.isfinite(moment).all() for moment in state.values())
    x = X[:1].expand(4, 6)  # identical rows: no spread either
    pre = model.pre_activation(x).detach()
    assert (
        trainer.aux_loss(trainer._auxk_code(x, pre), torch.ones(4, 6, dtype=torch.float64)).item()
        == 0.0
    )


def test_auxk_revives_dead_latents():
    X = torch.randn(512, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    alive = {}
    for coef in [0.0, 1.0]:
        model = SparseAutoencoder(6, 20, TopK(k=2), dtype=torch.float64)
        model.reset_parameters(torch.Generator().manual_seed(0), b_dec=X.mean(dim=0))
        with torch.no_grad():
            model.b_enc[:8] = -2.5  # the first eight latents start nearly dead
        trainer = Trainer(model, learning_rate=1e-2, auxk=AuxK(k=3, coef=coef, dead_steps=4))
        for _ in range(30):
            stats = trainer.run_epoch(DenseRows(X), batch_size=64)
        alive[coef] = int((stats.feature_density[:8] > 0).sum())
    assert alive[1.0] >= alive[0.0] + 3


@pytest.fixture(params=["gather-sum", "csr"])
def sparse_products(request, monkeypatch, device):
    """Each form of the products with a sparse code, on every device: ``embedding_bag``
    gather-sums (the CPU's) and CSR products (an accelerator's)."""
    on = frozenset({device}) if request.param == "gather-sum" else frozenset()
    monkeypatch.setattr(module, "_GATHER_SUM_DEVICES", on)
    return request.param


@pytest.mark.parametrize("k, n_latents", [(2, 256), (8, 16)])
def test_sparse_and_dense_codes_give_the_same_loss_and_gradients(
    k, n_latents, device, sparse_products
):
    model = _model(TopK(k=k), n_latents=n_latents, device=device)
    x = torch.randn(32, 6, dtype=torch.float64, device=device)
    pre = model.pre_activation(x)
    # The sparsifier picks the form that decodes faster: indices only for few actives.
    assert (model.sparsifier(pre).indices is not None) == (k * 32 <= n_latents)
    values, indices = pre.topk(k, dim=1)
    sparse = Code(torch.relu(values), indices)
    dense = Code(sparse.to_dense(n_latents))
    loss_sparse = (x - model.decode(sparse)).square().sum()
    loss_dense = (x - model.decode(dense)).square().sum()
    torch.testing.assert_close(loss_sparse, loss_dense)
    grads_sparse = torch.autograd.grad(loss_sparse, list(model.parameters()), retain_graph=True)
    grads_dense = torch.autograd.grad(loss_dense, list(model.parameters()))
    for sparse_grad, dense_grad in zip(grads_sparse, grads_dense, strict=True):
        torch.testing.assert_close(sparse_grad, dense_grad)


def _loss_and_gradients(trainer, x):
    loss = trainer.loss(x)[0]
    parameters = [p for p in trainer.model.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, [x, *parameters])


def test_sparse_encoder_backward_equals_the_dense_one_with_auxk(device, sparse_products):
    """The training loss and every gradient (input included) are those of plain autograd
    through the dense pre-activations, for the TopK loss and the AuxK loss alike."""
    model = _model(TopK(k=3), n_features=6, n_latents=128, device=device)
    trainer = Trainer(model, learning_rate=1e-3, auxk=AuxK(k=4, coef=0.5, dead_steps=1))
    trainer.steps_since_fired[::3] = 1  # a third of the latents are dead
    trainer._refresh_auxk()
    x = torch.randn(40, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert model.sparsifier.trains_sparse(model.n_latents)  # the path under test
    sparse_loss, sparse_grads = _loss_and_gradients(trainer, x)

    class DenseSelection(SparseAutoencoder):
        def selected_pre_activation(self, x, pre, indices):
            return pre.gather(1, indices)

    model.__class__ = DenseSelection
    # The dense path: autograd through the whole pre-activations and their topk.
    model.sparsifier.trains_sparse = lambda n_latents: False
    dense_loss, dense_grads = _loss_and_gradients(trainer, x)
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-12, atol=0)
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads, strict=True):
        assert dense_grad.abs().max() > 0
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("sparsifier", [ReLU(), BatchTopK(k=3)], ids=["relu", "batchtopk"])
def test_dense_codes_train_with_the_textbook_loss_and_gradients(sparsifier):
    """The trainer writes a dense code's pre-activations into a buffer that every step
    reuses, the code over them and the code's gradient over the code: the loss and every
    gradient (input included) are still those of plain autograd, batch after batch."""
    model = _model(sparsifier)
    trainer = Trainer(model, learning_rate=1e-3, alpha=0.5)
    generator = torch.Generator().manual_seed(0)
    for rows in [32, 32, 7]:
        x = torch.randn(rows, 6, dtype=torch.float64, generator=generator).requires_grad_(True)
        loss, grads = _loss_and_gradients(trainer, x)

        pre = (x - model.b_dec) @ model.W_enc.T + model.b_enc
        if isinstance(sparsifier, ReLU):
            code = torch.relu(pre)
            penalty = 0.5 * (code * model.W_dec.norm(dim=1)).sum() / rows
        else:
            code, penalty = _batch_top_reference(pre, k=3), 0.0
        expected = (x - code @ model.W_dec - model.b_dec).square().sum() / rows + penalty
        parameters = [p for p in model.parameters() if p.requires_grad]
        expected_grads = torch.autograd.grad(expected, [x, *parameters])
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def _gradient_norm_seen_by_adam(max_grad_norm):
    """Global gradient norm that the optimiser steps with, on one large batch."""
    x = 100.0 * torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = _model(JumpReLU(20, bandwidth=0.1))
    trainer = Trainer(model, learning_rate=1e-3, alpha=0.1, max_grad_norm=max_grad_norm)
    optimizer_step, seen = trainer.optimizer.step, []

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return optimizer_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.step(x)
    return seen[0]


def test_adam_steps_with_the_decoder_gradient_tangent_to_the_unit_rows():
    # The renormalisation after the step would hide a missing projection: look at what
    # the optimiser is given.
    model = _model(TopK(k=3))
    trainer = Trainer(model, learning_rate=1e-3)
    radial, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        assert model.W_dec.grad.abs().sum() > 0
        radial.append((model.W_dec.grad * model.W_dec).sum(dim=1))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.step(torch.randn(32, 6, dtype=torch.float64))
    torch.testing.assert_close(radial[0], torch.zeros(20, dtype=torch.float64))


def test_a_step_never_leaves_a_jumprelu_threshold_negative():
    # Adam's first steps are about the learning rate, three times the thresholds here.
    model = _model(JumpReLU(20, bandwidth=1.0))
    trainer = Trainer(model, learning_rate=3.0, alpha=1.0)
    x = torch.randn(64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        trainer.step(x)
    assert (model.sparsifier.threshold >= 0).all()
    assert (model.sparsifier.threshold == 0).any()


def test_gradients_are_clipped_to_max_grad_norm_before_the_step():
    assert _gradient_norm_seen_by_adam(None) > 1.0  # the batch's own gradient
    assert _gradient_norm_seen_by_adam(0.01) == pytest.approx(0.01)


def test_divergence_is_detected_by_growth_not_only_by_nan():
    trainer = Trainer(_model(TopK(k=3)), learning_rate=1e8)
    X = torch.randn(256, 6, dtype=torch.float64)
    with pytest.raises(TrainingDiverged, match="all-zero code"):
        for _ in range(5):
            trainer.run_epoch(DenseRows(X), batch_size=32)


def test_an_overflowing_adam_moment_is_divergence():
    # A squared gradient past float32's range froze every weight it touched (Adam's
    # step is then 0), and training went on as if nothing had happened.
    model = _model(ReLU()).float()
    trainer = Trainer(model, learning_rate=1e-3, alpha=1e25)
    X = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GradientOverflow, match=r"passed 1\.8e\+19, whose square overflowed"):
        trainer.run_epoch(DenseRows(X), batch_size=64)


def test_the_variance_and_fvu_of_tiny_float32_rows():
    # Squared in float32, values of 1e-25 underflow: a variance of 0 and an FVU of NaN.
    X = torch.randn(300, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = _model(TopK(k=2))
    with torch.no_grad():  # without biases, the codes scale with the data
        model.b_dec.zero_()
        model.b_enc.zero_()
    expected = DenseRows(X).variance(), evaluate_fvu(model, DenseRows(X))
    tiny = DenseRows((1e-25 * X).float())
    assert tiny.variance() == pytest.approx(1e-50 * expected[0], rel=1e-5)
    assert evaluate_fvu(model.float(), tiny) == pytest.approx(expected[1], rel=1e-5)


def test_bfloat16_steps_read_the_weights_of_their_own_step():
    """autocast keeps its casts of weights until its outermost region ends: within
    another (a caller's, or own_modes'), each step decoded with the first step's."""
    X = torch.randn(128, 6, generator=torch.Generator().manual_seed(0))

    def trained(outer_region):
        model = _model(ReLU()).float()  # a dense code: the decoder runs under autocast
        trainer = Trainer(model, learning_rate=1e-2, autocast_dtype=torch.bfloat16)
        with outer_region:
            trainer.run_epoch(DenseRows(X), batch_size=32)
        return model.W_dec.detach()

    alone = trained(contextlib.nullcontext())
    assert torch.equal(trained(torch.autocast("cpu", enabled=False)), alone)


def test_evaluate_fvu_bounds_its_codes_not_only_its_rows(monkeypatch):
    """Chunks were sized by the features: 16 times wider codes took 16 times the memory."""
    X = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = SparseAutoencoder(4, 64, TopK(k=3), dtype=torch.float64)
    model.reset_parameters(torch.Generator().manual_seed(0), b_dec=X.mean(0))
    whole = evaluate_fvu(model, DenseRows(X))
    monkeypatch.setattr(training, "rows_per_chunk", partial(rows_per_chunk, values=64 * 16))
    monkeypatch.setattr(training, "INFERENCE_CHUNK_ROWS", 4)
    chunks = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda x: chunks.append(len(x)) or encode(x))
    assert evaluate_fvu(model, DenseRows(X)) == pytest.approx(whole, rel=1e-12)
    assert chunks == [16] * 4


def test_map_rows_pads_chunks_and_keeps_row_order():
    X = np.arange(20.0).reshape(10, 2)
    seen_shapes = []

    def double(chunk):
        seen_shapes.append(tuple(chunk.shape))
        return 2 * chunk

    np.testing.assert_array_equal(map_rows(double, X, device="cpu", chunk_rows=4), 2 * X)
    assert seen_shapes == [(4, 2)] * 3
