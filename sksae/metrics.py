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

from ._nn.batches import as_dense, largest_magnitude, squared_deviation_sum

__all__ = ["code_bytes", "compression_ratio", "dead_fraction", "fvu", "l0", "mmcs"]


def fvu(X, X_hat):
    """Fraction of variance unexplained by a reconstruction.

    ``sum ||x - x_hat||^2 / sum ||x - mean(X)||^2``: 0 is perfect, 1 is no better than
    predicting the mean row. ``1 - fvu`` is the explained variance that
    :meth:`SparseAutoencoderTransformer.score` returns, except on data whose rows are
    all the same, where ``score`` gives 1.0 for a perfect reconstruction and 0.0 for any
    other, as :func:`sklearn.metrics.r2_score` does.

    Parameters
    ----------
    X : {ndarray, sparse matrix} of shape (n_samples, n_features)
        The data.
    X_hat : {ndarray, sparse matrix} of shape (n_samples, n_features)
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
    X, X_hat = _dense_floats(X, "X"), _dense_floats(X_hat, "X_hat")
    if X.shape != X_hat.shape:
        raise ValueError(f"X and X_hat must have the same shape, got {X.shape} and {X_hat.shape}.")
    # Both sums in units of the power of two just above the largest value of X, whose
    # ratio is the same: squares of values beyond about 1e154 overflow, and below about
    # 1e-154 underflow; differences of values beyond about 1e307 overflow too. A power of
    # two scales exactly: a division by the largest value rounded X and X_hat before
    # their difference cancelled, and lost 7 digits of the FVU of data offset by 1e9.
    exponent = np.frexp(largest_magnitude(X))[1]
    X, errors = np.ldexp(X, -exponent), np.ldexp(X_hat, -exponent)
    errors -= X  # in place: no third array the size of X
    residual = np.square(errors, out=errors).sum()
    total = squared_deviation_sum(X)  # exactly 0 when the rows are all the same
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
    codes = _checked_matrix(codes, "codes")
    return float(_count_nonzero(codes) / codes.shape[0])


def code_bytes(codes, *, value_dtype=None):
    """Bytes to store ``codes`` in CSR form with the smallest index types that fit.

    The count is ``nnz * (value + index bytes) + (n_samples + 1) * pointer bytes``:
    each nonzero stores its value (in ``value_dtype``, by default the codes' dtype) and
    its column (the smallest unsigned integer type that holds ``n_components - 1``), and
    each row its offset into them (the smallest unsigned type that holds ``nnz``). This is
    what a CSR array with those dtypes occupies, and about what ``numpy.savez`` of its
    three arrays writes.

    Parameters
    ----------
    codes : {ndarray, sparse matrix} of shape (n_samples, n_components)
        Codes, for example from ``transform``.
    value_dtype : dtype or None, default=None
        Type of the stored values (``np.float16`` halves them); ``None`` keeps the
        codes' own.

    Returns
    -------
    n_bytes : int

    Examples
    --------
    >>> import numpy as np
    >>> from sksae.metrics import code_bytes
    >>> codes = np.zeros((10, 300), dtype=np.float32)
    >>> codes[:, :4] = 1.0  # 4 nonzeros per row: float32 values, uint16 columns
    >>> code_bytes(codes)  # 40 * (4 + 2) + 11 * 1
    251
    >>> code_bytes(codes, value_dtype=np.float16)
    171
    """
    codes = _checked_matrix(codes, "codes")
    n_samples, n_components = codes.shape
    nnz = _count_nonzero(codes)
    value_dtype = np.dtype(codes.dtype if value_dtype is None else value_dtype)
    index_bytes = np.min_scalar_type(max(n_components - 1, 0)).itemsize
    pointer_bytes = np.min_scalar_type(nnz).itemsize
    return int(nnz * (value_dtype.itemsize + index_bytes) + (n_samples + 1) * pointer_bytes)


def compression_ratio(X, codes, *, value_dtype=None):
    """Bytes of ``X`` as a dense array over the bytes of its sparse ``codes``.

    The numerator is ``X.size * X.dtype.itemsize`` (a dense float array); the
    denominator is :func:`code_bytes`, whose docstring states the index and value types.
    The dictionary itself, stored once, is not counted.

    Parameters
    ----------
    X : {ndarray, sparse matrix} of shape (n_samples, n_features)
        The data the codes encode.
    codes : {ndarray, sparse matrix} of shape (n_samples, n_components)
    value_dtype : dtype or None, default=None
        Type of the stored code values (see :func:`code_bytes`).

    Returns
    -------
    ratio : float
        Above 1: the codes are smaller than the data.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae.metrics import compression_ratio
    >>> X = np.ones((10, 64), dtype=np.float32)
    >>> codes = np.zeros((10, 300), dtype=np.float32)
    >>> codes[:, :4] = 1.0
    >>> round(compression_ratio(X, codes), 2)  # 2560 bytes over 251
    10.2
    """
    X = _checked_matrix(X, "X")
    codes = _checked_matrix(codes, "codes")
    if X.shape[0] != codes.shape[0]:
        raise ValueError(
            f"X and codes must have the same number of rows, got {X.shape[0]} and {codes.shape[0]}."
        )
    dense_bytes = X.shape[0] * X.shape[1] * X.dtype.itemsize
    return float(dense_bytes / code_bytes(codes, value_dtype=value_dtype))


def dead_fraction(codes):
    """Fraction of latents (columns of ``codes``) that are zero on every row.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae.metrics import dead_fraction
    >>> dead_fraction(np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 3.0, 0.0]]))
    0.5
    """
    codes = _checked_matrix(codes, "codes")
    if sp.issparse(codes):
        codes = _canonical(codes)
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
    true_directions : {ndarray, sparse matrix} of shape (n_true, n_features)
    learned_directions : {ndarray, sparse matrix} of shape (n_learned, n_features)
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
    true = _unit_rows(true_directions, "true_directions")
    learned = _unit_rows(learned_directions, "learned_directions")
    if true.shape[1] != learned.shape[1]:
        raise ValueError(
            f"true_directions has {true.shape[1]} features, learned_directions {learned.shape[1]}."
        )
    # Rounding can take the cosine of parallel unit rows just past 1.
    return float(np.minimum(np.abs(true @ learned.T).max(axis=1), 1.0).mean())


def _checked_matrix(A, name):
    """``A`` as a 2-D array or scipy.sparse matrix with rows and columns; a list or a
    DataFrame (from ``set_output(transform="pandas")``) becomes an array."""
    if sp.issparse(A) and A.format not in {"csr", "csc", "coo", "bsr"}:
        # LIL's data holds lists, DOK has none, DIA's pads its diagonals past the matrix.
        A = A.tocsr()
    elif not sp.issparse(A):
        A = _as_array(A)
    if A.ndim != 2 or 0 in A.shape:
        raise ValueError(
            f"{name} must be a 2-D array with at least one row and one column, got shape {A.shape}."
        )
    values = A.data if sp.issparse(A) else A
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {values.dtype}.")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinity.")
    return A


def _as_array(A):
    """``A`` as a numpy array. A DataFrame of pandas's nullable dtypes (``Float32``,
    ``Int64``, ``boolean``), which numpy reads as objects, takes their numpy dtypes, and
    a missing value (``pd.NA``) becomes NaN, which the checks refuse."""
    # A DataFrame's dtypes, one per column (a Series has one dtype, and is 1-D anyway).
    columns = getattr(A, "dtypes", []) if getattr(A, "ndim", None) == 2 else []
    dtypes = [getattr(dtype, "numpy_dtype", dtype) for dtype in columns]
    if not dtypes or not all(isinstance(d, np.dtype) and d.kind in "biuf" for d in dtypes):
        return np.asarray(A)
    dtype = np.result_type(*dtypes)
    if A.isna().to_numpy().any():
        dtype = np.result_type(dtype, np.float16)  # the least float that holds NaN
    return A.to_numpy(dtype=dtype, na_value=np.nan)


def _canonical(A):
    """The sparse ``A`` as a CSR array that stores each entry once, for counting its
    nonzeros: duplicates (+1 and -1 stored for one entry are a zero) are summed in a
    copy, as scipy's ``count_nonzero`` would sum them in the caller's matrix."""
    A = sp.csr_array(A)
    if not A.has_canonical_format:
        A = A.copy()
        A.sum_duplicates()
    return A


def _count_nonzero(codes):
    return _canonical(codes).count_nonzero() if sp.issparse(codes) else np.count_nonzero(codes)


def _dense_floats(A, name):
    A = as_dense(_checked_matrix(A, name))
    with np.errstate(over="ignore"):  # a finite long double may overflow float64
        A = np.asarray(A, dtype=np.float64)
    if not np.isfinite(A).all():
        raise ValueError(f"{name} holds values beyond the float64 range.")
    return A


def _unit_rows(A, name):
    """The rows of ``A`` scaled to unit norm; zero rows stay zero."""
    A = _dense_floats(A, name)
    # Each row divided by its largest magnitude first, its sum of squares lies between
    # 1 and n_features: a row of 1e200 overflowed it, and subnormal numbers underflowed.
    largest = np.abs(A).max(axis=1, keepdims=True)
    A = A / np.where(largest > 0, largest, 1.0)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return A / np.where(norms > 0, norms, 1.0)
