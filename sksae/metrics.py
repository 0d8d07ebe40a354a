"""Quality measures of a sparse autoencoder: numpy arrays in, Python floats out.

Examples
--------
>>> import numpy as np
>>> from sksae.metrics import fvu, l0
>>> X = np.array([[0.0, 2.0], [2.0, 0.0]])
>>> fvu(X, X)
0.0
>>> l0(np.array([[0.0, 1.5, 0.0], [3.0, 1.0, 0.0]]))
1.5
"""

import numpy as np
import scipy.sparse as sp

__all__ = ["dead_fraction", "fvu", "l0", "mmcs"]


def fvu(X, X_hat):
    """Fraction of variance unexplained by a reconstruction.

    ``sum ||x - x_hat||^2 / sum ||x - mean(X)||^2``: 0 is perfect, 1 is no better than
    predicting the mean row. ``1 - fvu`` is the explained variance that
    :meth:`SparseAutoencoderTransformer.score` returns.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The data.
    X_hat : ndarray of shape (n_samples, n_features)
        Its reconstruction.

    Returns
    -------
    fvu : float
        ``inf`` (or ``nan`` for a perfect reconstruction) when every row of ``X`` is the same.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae.metrics import fvu
    >>> X = np.array([[1.0, 0.0], [-1.0, 0.0]])
    >>> fvu(X, np.zeros_like(X))
    1.0
    >>> fvu(X, 0.5 * X)
    0.25
    """
    X = np.asarray(X, dtype=np.float64)
    X_hat = np.asarray(X_hat, dtype=np.float64)
    if X.shape != X_hat.shape:
        raise ValueError(f"X and X_hat must have the same shape, got {X.shape} and {X_hat.shape}.")
    residual = np.square(X - X_hat).sum()
    total = np.square(X - X.mean(axis=0)).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(residual / total)


def l0(codes):
    """Mean number of nonzero entries per row of ``codes`` (dense or scipy.sparse).

    Examples
    --------
    >>> import numpy as np
    >>> from sksae.metrics import l0
    >>> l0(np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]))
    1.0
    """
    if sp.issparse(codes):
        return float(codes.count_nonzero() / codes.shape[0])
    codes = np.asarray(codes)
    return float(np.count_nonzero(codes) / codes.shape[0])


def dead_fraction(codes):
    """Fraction of latents (columns of ``codes``) that are zero on every row.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae.metrics import dead_fraction
    >>> dead_fraction(np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 3.0, 0.0]]))
    0.5
    """
    if sp.issparse(codes):
        codes = sp.csr_array(codes)
        fired = np.bincount(codes.indices[codes.data != 0], minlength=codes.shape[1]) > 0
    else:
        fired = np.any(np.asarray(codes) != 0, axis=0)
    return float(1.0 - fired.mean())


def mmcs(true_directions, learned_directions):
    """Mean max cosine similarity: how well a dictionary recovers known directions.

    For each true direction, the largest ``|cos|`` with any learned direction, averaged
    over the true directions: 1 means every true direction has a learned twin. The sign
    is ignored, as a direction and its negative span the same feature.

    Parameters
    ----------
    true_directions : ndarray of shape (n_true, n_features)
    learned_directions : ndarray of shape (n_learned, n_features)
        For example a fitted model's ``components_``.

    Returns
    -------
    mmcs : float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from sksae.metrics import mmcs
    >>> true = np.eye(2)
    >>> mmcs(true, np.array([[2.0, 0.0], [0.0, -3.0], [1.0, 1.0]]))
    1.0
    >>> round(mmcs(true, np.array([[1.0, 1.0]])), 4)
    0.7071
    """
    true = _unit_rows(true_directions)
    learned = _unit_rows(learned_directions)
    if true.shape[1] != learned.shape[1]:
        raise ValueError(
            f"true_directions has {true.shape[1]} features, learned_directions {learned.shape[1]}."
        )
    return float(np.abs(true @ learned.T).max(axis=1).mean())


def _unit_rows(A):
    A = np.asarray(A, dtype=np.float64)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return A / np.maximum(norms, np.finfo(np.float64).tiny)
