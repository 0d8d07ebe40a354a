"""The estimators on a CUDA GPU, against the same models on the CPU.

Every test here needs a GPU and is skipped without one (``pytest -m cuda`` selects them).
A GPU's kernels sum in other orders than the CPU's, so fits agree in quality, not bit for
bit; a fitted model moved between devices encodes the same data alike up to rounding.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import sksae
from sksae import SparseAutoencoderOutlierDetector, SparseAutoencoderTransformer
from sksae.metrics import fvu, mmcs

pytestmark = pytest.mark.cuda

ACTIVATIONS = ["topk", "batchtopk", "jumprelu", "relu"]


def _sae(**params):
    defaults = dict(n_components=64, k=3, max_iter=10, alpha=0.01, random_state=0)
    return SparseAutoencoderTransformer(**{**defaults, **params})


def _reconstruction_fvu(sae, X):
    return fvu(X, sae.inverse_transform(sae.transform(X)))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_gpu_fit_matches_a_cpu_fit_in_quality(superposition_small, activation):
    X, directions = superposition_small
    on_cpu = _sae(activation=activation).fit(X)
    on_gpu = _sae(activation=activation, device="cuda").fit(X)
    for name in ["components_", "encoder_weights_", "encoder_bias_", "decoder_bias_"]:
        assert type(getattr(on_gpu, name)) is np.ndarray
        assert getattr(on_gpu, name).dtype == np.float32
    assert _reconstruction_fvu(on_gpu, X) == pytest.approx(_reconstruction_fvu(on_cpu, X), rel=0.1)
    assert mmcs(directions, on_gpu.components_) == pytest.approx(
        mmcs(directions, on_cpu.components_), abs=0.05
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_gpu_model_encodes_on_the_cpu_as_on_the_gpu(superposition_small, activation):
    X, _ = superposition_small
    sae = _sae(activation=activation, device="cuda").fit(X)
    on_gpu = sae.transform(X)
    on_cpu = sae.set_params(device="cpu").transform(X)
    # Near-ties may pick different latents under different summation orders: compare
    # the codes' reconstructions, and all but a sliver of the codes themselves.
    assert np.isclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5).mean() > 0.999
    np.testing.assert_allclose(
        sae.inverse_transform(on_gpu), sae.inverse_transform(on_cpu), rtol=1e-3, atol=1e-3
    )


def test_bfloat16_autocast_on_the_gpu_trains_as_well_as_float32(superposition_small):
    X, _ = superposition_small
    for n_components, activation in [(128, "topk"), (64, "relu")]:
        params = dict(activation=activation, n_components=n_components, device="cuda")
        exact = _sae(**params).fit(X)
        mixed = _sae(**params, autocast_dtype="bfloat16").fit(X)
        assert not np.array_equal(exact.components_, mixed.components_)
        assert _reconstruction_fvu(mixed, X) == pytest.approx(
            _reconstruction_fvu(exact, X), rel=0.05
        )


# None: the greedy pursuit over 4k candidates; 3 (= k): the refit of the encoder's latents.
@pytest.mark.parametrize("n_candidates", [None, 3])
def test_pursuit_on_the_gpu_equals_pursuit_on_the_cpu(superposition_small, n_candidates):
    X, _ = superposition_small
    sae = _sae(
        device="cuda", transform_algorithm="pursuit", transform_n_candidates=n_candidates
    ).fit(X)
    on_gpu = sae.transform(X)
    on_cpu = sae.set_params(device="cpu").transform(X)
    assert np.isclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-4).mean() > 0.99


def test_host_data_streams_to_the_gpu(superposition_small, tmp_path):
    X, _ = superposition_small
    memmap = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    memmap[:] = X
    memmap.flush()
    read_only = np.load(tmp_path / "X.npy", mmap_mode="r")
    from_memmap = _sae(device="cuda").fit(read_only)
    from_sparse = _sae(device="cuda").fit(sp.csr_array(X))
    in_memory = _sae(device="cuda").fit(X)
    reference = _reconstruction_fvu(in_memory, X)
    for sae in [from_memmap, from_sparse]:
        assert _reconstruction_fvu(sae, X) == pytest.approx(reference, rel=0.1)


def test_partial_fit_on_the_gpu_continues_training(superposition_small):
    X, _ = superposition_small
    sae = _sae(device="cuda")
    scores = []
    for _ in range(3):
        for chunk in np.array_split(X, 8):
            sae.partial_fit(chunk)
        scores.append(sae.score(X))
    assert scores[0] < scores[-1]


def test_a_model_saved_from_the_gpu_loads_on_a_cpu_only_machine(
    superposition_small, tmp_path, monkeypatch
):
    X, _ = superposition_small
    sae = _sae(device="cuda").fit(X)
    sksae.save(sae, tmp_path)
    expected = sae.set_params(device="cpu").transform(X)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    np.testing.assert_array_equal(sksae.load(tmp_path).transform(X), expected)


def test_the_outlier_detector_runs_on_the_gpu(superposition_small):
    X, _ = superposition_small
    rng = np.random.default_rng(0)
    outliers = 3 * rng.standard_normal((40, X.shape[1])).astype(X.dtype)
    detector = SparseAutoencoderOutlierDetector(
        n_components=64, k=3, max_iter=10, device="cuda", random_state=0
    ).fit(X)
    scores = detector.score_samples(np.vstack([X[:400], outliers]))
    # Every outlier scores below (is more abnormal than) the median inlier.
    assert (scores[400:] < np.median(scores[:400])).all()
