"""Synthetic data with known ground truth, to test what a sparse autoencoder recovers."""

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, validate_params

__all__ = ["make_sparse_superposition"]


@validate_params(
    {
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "n_sources": [Interval(Integral, 1, None, closed="left")],
        "n_active": [Interval(Real, 0, None, closed="neither")],
        "noise": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "return_sources": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_sparse_superposition(
    n_samples=10_000,
    n_features=64,
    n_sources=256,
    n_active=5,
    noise=0.01,
    *,
    random_state=None,
    return_sources=False,
):
    """Sparse combinations of more directions than dimensions ("superposition").

    ``n_sources`` random unit directions in ``R^n_features``; each sample switches each
    source on independently with probability ``n_active / n_sources`` (so about
    ``n_active`` sources per sample), with an Exp(1) magnitude, and adds isotropic Gaussian
    noise of standard deviation ``noise``. A sparse dictionary learner should recover the
    directions: measure it with :func:`sksae.metrics.mmcs`.

    Parameters
    ----------
    n_samples : int, default=10_000
    n_features : int, default=64
    n_sources : int, default=256
        Number of ground-truth directions; more than ``n_features`` puts them in
        superposition.
    n_active : float, default=5
        Expected number of active sources per sample (at most ``n_sources``).
    noise : float, default=0.01
        Standard deviation of the additive Gaussian noise.
    random_state : int, RandomState instance or None, default=None
        Seed of the draw; pass an int for reproducible data.
    return_sources : bool, default=False
        Also return the directions and the activations that generated the data.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float64
    directions : ndarray of shape (n_sources, n_features)
        Unit-norm ground-truth directions; only when ``return_sources=True``.
    activations : ndarray of shape (n_samples, n_sources)
        Source magnitudes (``X = activations @ directions + noise``); only when
        ``return_sources=True``.

    Examples
    --------
    >>> from sksae.datasets import make_sparse_superposition
    >>> X, directions, activations = make_sparse_superposition(
    ...     n_samples=1000, n_features=16, n_sources=64, n_active=3, random_state=0,
    ...     return_sources=True)
    >>> X.shape, directions.shape, activations.shape
    ((1000, 16), (64, 16), (1000, 64))
    >>> bool(2.5 < (activations > 0).sum(axis=1).mean() < 3.5)
    True
    """
    if n_active > n_sources:
        raise ValueError(f"n_active={n_active} cannot exceed n_sources={n_sources}.")
    rng = check_random_state(random_state)
    directions = rng.standard_normal((n_sources, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    active = rng.random_sample((n_samples, n_sources)) < n_active / n_sources
    activations = rng.exponential(1.0, size=(n_samples, n_sources)) * active
    X = activations @ directions + noise * rng.standard_normal((n_samples, n_features))
    if return_sources:
        return X, directions, activations
    return X
