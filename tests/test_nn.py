"""The torch backend on its own: module algebra, sparsifiers and the training loop."""

import numpy as np
import pytest
import torch

from sksae._nn.batches import map_rows
from sksae._nn.module import SparseAutoencoder, geometric_median
from sksae._nn.sparsifiers import Code, ReLU, TopK
from sksae._nn.training import Trainer, TrainingDiverged


def _model(sparsifier, n_features=6, n_latents=20, seed=0):
    model = SparseAutoencoder(n_features, n_latents, sparsifier, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    model.reset_parameters(generator, b_dec=torch.randn(n_features, generator=generator))
    with torch.no_grad():
        model.b_enc.normal_(generator=generator)
    return model


def test_folded_bias_equals_the_textbook_encoder():
    model = _model(ReLU())
    x = torch.randn(7, 6, dtype=torch.float64)
    textbook = (x - model.b_dec) @ model.W_enc.T + model.b_enc
    torch.testing.assert_close(model.pre_activation(x), textbook)


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
    code = ReLU()(torch.tensor([[1.0, -2.0, 3.0]]))
    assert ReLU().penalty(code, torch.tensor([2.0, 5.0, 0.5])).item() == pytest.approx(3.5)
    assert TopK(k=1).penalty(code, torch.ones(3)) is None


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


def test_geometric_median_is_robust_to_outliers():
    X = torch.cat([torch.randn(200, 3, dtype=torch.float64) * 0.1, torch.full((20, 3), 1e3)])
    median = geometric_median(X)
    assert median.norm() < 0.5
    assert X.mean(0).norm() > 50


def test_alpha_warms_up_linearly():
    trainer = Trainer(_model(ReLU()), learning_rate=1e-3, alpha=2.0, alpha_warmup_steps=4)
    seen = []
    for _ in range(6):
        seen.append(trainer._alpha_now())
        trainer.step(torch.randn(8, 6, dtype=torch.float64))
    assert seen == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_divergence_is_detected_by_growth_not_only_by_nan():
    trainer = Trainer(_model(TopK(k=3)), learning_rate=1e8)
    X = torch.randn(256, 6, dtype=torch.float64)
    with pytest.raises(TrainingDiverged, match="all-zero code"):
        for _ in range(5):
            trainer.run_epoch(X, batch_size=32)


def test_map_rows_pads_chunks_and_keeps_row_order():
    X = np.arange(20.0).reshape(10, 2)
    seen_shapes = []

    def double(chunk):
        seen_shapes.append(tuple(chunk.shape))
        return 2 * chunk

    np.testing.assert_array_equal(map_rows(double, X, device="cpu", chunk_rows=4), 2 * X)
    assert seen_shapes == [(4, 2)] * 3
