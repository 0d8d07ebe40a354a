import numpy as np
import pytest

from sksae.datasets import make_sparse_superposition


def test_data_is_the_sparse_mix_of_unit_directions_plus_noise():
    X, directions, activations = make_sparse_superposition(
        n_samples=20_000,
        n_features=8,
        n_sources=40,
        n_active=4,
        noise=0.05,
        random_state=0,
        return_sources=True,
    )
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    assert (activations >= 0).all()
    assert (activations > 0).sum(axis=1).mean() == pytest.approx(4, rel=0.05)
    assert activations[activations > 0].mean() == pytest.approx(1.0, rel=0.05)  # Exp(1)
    residual = X - activations @ directions
    assert residual.std() == pytest.approx(0.05, rel=0.05)


def test_reproducible_and_noise_free():
    X1 = make_sparse_superposition(100, 4, 8, 2, noise=0.0, random_state=3)
    X2, directions, activations = make_sparse_superposition(
        100, 4, 8, 2, noise=0.0, random_state=3, return_sources=True
    )
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_allclose(X2, activations @ directions)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_active"):
        make_sparse_superposition(10, 4, 8, n_active=9)
    with pytest.raises(ValueError, match="n_samples"):
        make_sparse_superposition(0)
