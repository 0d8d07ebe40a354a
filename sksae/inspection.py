"""Interpretability tools for a fitted :class:`~sksae.SparseAutoencoderTransformer`.

A sparse autoencoder is only useful for interpretation if its latents can be read: this
module finds the samples that activate each latent most (its "max-activating examples"),
measures how often each latent fires, scores how consistently a latent's top samples share
a label (a simple proxy for monosemanticity), and plots the dictionary, the density of the
latents and their top samples. The functions that encode ``X`` do so in chunks of rows
with the model's own ``transform``, never holding the full ``(n_samples, n_components)``
code matrix, so they run on data whose codes would not fit in memory.
"""

import warnings

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, validate_data

from ._nn.batches import as_dense, rows_per_chunk
from ._validation import is_int

__all__ = [
    "feature_density",
    "feature_label_purity",
    "plot_dictionary",
    "plot_feature_density",
    "plot_top_activations",
    "top_activating",
    "top_activating_per_feature",
]

#: Code values (rows x latents) encoded at a time: 8 MB of float32 codes, which their
#: merge with the running top (a copy, and the int64 order that sorts it) takes to about
#: 40 MB.
_CHUNK_VALUES = 2**21


def top_activating(model, X, feature, n=20):
    """The rows of ``X`` on which one latent is most active.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model; or, as a baseline, any fitted scikit-learn transformer with
        ``components_`` whose ``transform`` gives one column per component (PCA,
        MiniBatchDictionaryLearning, a random projection...).
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data to encode, dense or scipy.sparse CSR/CSC.
    feature : int
        Index of the latent, in ``[0, n_components)``.
    n : int, default=20
        Number of rows to return.

    Returns
    -------
    sample_indices : ndarray of shape (min(n, n_samples),)
        Row indices of ``X``, by decreasing activation; equal activations come in
        increasing row order, so rows where the latent is off (zeros) fill the end when
        fewer than ``n`` rows activate it.
    activations : ndarray of shape (min(n, n_samples),)
        The latent's activation on those rows, in the dtype of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> from sksae.inspection import top_activating
    >>> X = make_sparse_superposition(n_samples=500, n_features=16, n_sources=32,
    ...                               n_active=3, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5,
    ...                                    random_state=0).fit(X)
    >>> rows, activations = top_activating(sae, X, feature=0, n=5)
    >>> rows.shape, activations.shape
    ((5,), (5,))
    >>> bool(np.all(np.diff(activations) <= 0))
    True
    >>> bool(np.allclose(sae.transform(X[rows])[:, 0], activations))
    True
    """
    X = _validate(model, X)
    _check_feature(model, feature)
    _check_n(n)
    activations = np.empty(X.shape[0], dtype=X.dtype)
    for start, codes in _encoded_chunks(model, X):
        activations[start : start + codes.shape[0]] = codes[:, feature]
    # A stable sort keeps equal activations in row order: ties go to the lower row.
    sample_indices = np.argsort(-activations, kind="stable")[:n]
    return sample_indices, activations[sample_indices]


def top_activating_per_feature(model, X, n=20):
    """The rows of ``X`` on which each latent is most active, for all latents at once.

    Row for row the same as :func:`top_activating` called on every latent, in one pass
    over ``X`` and in bounded memory: ``X`` is encoded in chunks of rows, and each chunk is
    merged into a running top ``n`` of every latent, so the full code matrix is never
    held.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model; or, as a baseline, any fitted scikit-learn transformer with
        ``components_`` whose ``transform`` gives one column per component (PCA,
        MiniBatchDictionaryLearning, a random projection...).
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data to encode, dense or scipy.sparse CSR/CSC.
    n : int, default=20
        Number of rows per latent.

    Returns
    -------
    sample_indices : ndarray of shape (n_components, min(n, n_samples))
        Row ``i`` holds the row indices of ``X`` that activate latent ``i`` most, by
        decreasing activation, equal activations in increasing row order.
    activations : ndarray of shape (n_components, min(n, n_samples))
        The activations of those rows, in the dtype of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> from sksae.inspection import top_activating, top_activating_per_feature
    >>> X = make_sparse_superposition(n_samples=500, n_features=16, n_sources=32,
    ...                               n_active=3, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5,
    ...                                    random_state=0).fit(X)
    >>> rows, activations = top_activating_per_feature(sae, X, n=5)
    >>> rows.shape, activations.shape
    ((64, 5), (64, 5))
    >>> bool(np.array_equal(rows[7], top_activating(sae, X, feature=7, n=5)[0]))
    True
    """
    X = _validate(model, X)
    _check_n(n)
    return _top_per_feature(model, X, n)


def _top_per_feature(model, X, n):
    """:func:`top_activating_per_feature` of ``X`` already validated."""
    n = min(n, X.shape[0])
    n_components = model.components_.shape[0]
    # Placeholders of -inf lose to every real activation, so the first chunk needs no
    # special case; all of them have been pushed out once n real rows were seen.
    top_values = np.full((n_components, n), -np.inf, dtype=X.dtype)
    top_rows = np.full((n_components, n), -1, dtype=np.intp)
    for start, codes in _encoded_chunks(model, X):
        # In X's dtype, as top_activating's: a baseline's codes may come in another.
        candidates = np.concatenate([top_values, codes.T.astype(X.dtype, copy=False)], axis=1)
        # Each chunk-sized array is freed as soon as it is used, not when its name is next
        # bound: at most two of them (the candidates and their sort order) are ever alive.
        del codes
        top_values, top_rows = _merge_top(candidates, top_rows, start)
        del candidates
    return top_rows, top_values


def feature_density(model, X):
    """Fraction of the rows of ``X`` on which each latent is active (nonzero).

    Latents at 0 are dead on ``X``; latents near 1 fire on almost everything and are
    rarely interpretable.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model; or, as a baseline, any fitted scikit-learn transformer with
        ``components_`` whose ``transform`` gives one column per component (PCA,
        MiniBatchDictionaryLearning, a random projection...).
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data to encode, dense or scipy.sparse CSR/CSC.

    Returns
    -------
    density : ndarray of shape (n_components,)
        Values in ``[0, 1]``, float64.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> from sksae.inspection import feature_density
    >>> X = make_sparse_superposition(n_samples=500, n_features=16, n_sources=32,
    ...                               n_active=3, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5,
    ...                                    random_state=0).fit(X)
    >>> density = feature_density(sae, X)
    >>> density.shape
    (64,)
    >>> bool(density.sum() <= 3)  # at most k=3 active latents per row
    True
    """
    X = _validate(model, X)
    n_active = np.zeros(model.components_.shape[0], dtype=np.int64)
    for _, codes in _encoded_chunks(model, X):
        n_active += np.count_nonzero(codes, axis=0)
    return n_active / X.shape[0]


def feature_label_purity(model, X, labels, n=20):
    """How consistently the top-activating rows of each latent share one label.

    For each latent, take its ``n`` top-activating rows (see
    :func:`top_activating_per_feature`), keep those where it is active (activation above
    0), and return the fraction of them that carry their most common label. 1 means all
    of a latent's top rows have the same label: a simple proxy for a monosemantic latent,
    as good as the labels are at naming what the latent should detect.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model; or, as a baseline, any fitted scikit-learn transformer with
        ``components_`` whose ``transform`` gives one column per component (PCA,
        MiniBatchDictionaryLearning, a random projection...).
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data to encode, dense or scipy.sparse CSR/CSC.
    labels : array-like of shape (n_samples,)
        One label per row of ``X``: ints or strings, anything ``numpy.unique`` can sort.
    n : int, default=20
        Number of top-activating rows per latent.

    Returns
    -------
    purity : ndarray of shape (n_components,)
        Values in ``(0, 1]``, float64; NaN for latents active on no row of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> from sksae.inspection import feature_label_purity
    >>> X, _, sources = make_sparse_superposition(
    ...     n_samples=500, n_features=16, n_sources=32, n_active=3, random_state=0,
    ...     return_sources=True)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5,
    ...                                    random_state=0).fit(X)
    >>> strongest_source = sources.argmax(axis=1)
    >>> purity = feature_label_purity(sae, X, strongest_source, n=10)
    >>> purity.shape
    (64,)
    >>> live = ~np.isnan(purity)
    >>> bool(np.all((0 < purity[live]) & (purity[live] <= 1)))
    True
    """
    X = _validate(model, X)
    _check_n(n)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != X.shape[0]:
        raise ValueError(
            f"labels must be a 1-D array-like with one label per row of X ({X.shape[0]} "
            f"rows), got shape {labels.shape}."
        )
    _, label_ids = np.unique(labels, return_inverse=True)
    n_labels = int(label_ids.max()) + 1
    sample_indices, activations = _top_per_feature(model, X, n)
    latent, rank = np.nonzero(activations > 0)
    # One key per (latent, label) pair: counting the keys counts each latent's labels
    # without an (n_components, n_labels) table, which many distinct labels would blow up.
    keys = latent * n_labels + label_ids[sample_indices[latent, rank]]
    pairs, pair_counts = np.unique(keys, return_counts=True)
    most_common = np.zeros(model.components_.shape[0], dtype=np.int64)
    np.maximum.at(most_common, pairs // n_labels, pair_counts)
    n_active = np.bincount(latent, minlength=model.components_.shape[0])
    purity = np.full(model.components_.shape[0], np.nan)
    np.divide(most_common, n_active, out=purity, where=n_active > 0)
    return purity


def plot_feature_density(model, X, ax=None, bins=50):
    """Histogram of ``log10`` of the density of the live latents on ``X``.

    Latents near 0 on this scale fire on almost every row and are rarely interpretable;
    dead latents (density 0) have no logarithm, so the title counts them instead.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model; or, as a baseline, any fitted scikit-learn transformer with
        ``components_`` whose ``transform`` gives one column per component (PCA,
        MiniBatchDictionaryLearning, a random projection...).
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data to encode, dense or scipy.sparse CSR/CSC.
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` draws on a new figure.
    bins : int or sequence, default=50
        Bins of the histogram, as for ``matplotlib.axes.Axes.hist``.

    Returns
    -------
    ax : matplotlib.axes.Axes

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> from sksae.inspection import plot_feature_density
    >>> X = make_sparse_superposition(n_samples=500, n_features=16, n_sources=32,
    ...                               n_active=3, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5,
    ...                                    random_state=0).fit(X)
    >>> ax = plot_feature_density(sae, X, ax=Figure().subplots(), bins=20)
    >>> ax.get_xlabel()
    'log10 feature density'
    """
    plt = _pyplot("plot_feature_density")
    density = feature_density(model, X)
    live = density > 0
    if ax is None:
        _, ax = plt.subplots()
    ax.hist(np.log10(density[live]), bins=bins)
    ax.set_xlabel("log10 feature density")
    ax.set_ylabel("latents")
    ax.set_title(f"{np.count_nonzero(~live)} dead latents of {density.size}")
    return ax


def plot_dictionary(model, image_shape, n_atoms=64, fig=None):
    """The first dictionary atoms (rows of ``components_``) as a grid of images.

    Each atom is shown on a grey scale symmetric about 0 (mid-grey), scaled to its own
    largest absolute value, so positive and negative weights read as light and dark.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model, whose features are the pixels of an image.
    image_shape : tuple of (int, int)
        Height and width of one image, for example ``(28, 28)``; their product is
        ``n_features``.
    n_atoms : int, default=64
        Number of atoms to show, from the first; at most ``n_components`` are shown.
    fig : matplotlib.figure.Figure or None, default=None
        Figure to draw on (it should be empty); ``None`` makes a new one.

    Returns
    -------
    fig : matplotlib.figure.Figure
        One Axes per atom.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> from sksae.inspection import plot_dictionary
    >>> X = make_sparse_superposition(n_samples=500, n_features=16, n_sources=32,
    ...                               n_active=3, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5,
    ...                                    random_state=0).fit(X)
    >>> fig = plot_dictionary(sae, image_shape=(4, 4), n_atoms=10, fig=Figure())
    >>> len(fig.axes)
    10
    """
    plt = _pyplot("plot_dictionary")
    _check_model(model)
    _check_image_shape(image_shape, model.components_.shape[1])
    if not is_int(n_atoms) or n_atoms < 1:
        raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}.")
    atoms = np.asarray(as_dense(model.components_[:n_atoms]))  # a random projection's is sparse
    n_cols = int(np.ceil(np.sqrt(atoms.shape[0])))
    n_rows = -(-atoms.shape[0] // n_cols)
    if fig is None:
        fig = plt.figure(figsize=(1.2 * n_cols, 1.2 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, atom in zip(axes, atoms, strict=False):
        # Guard an all-zero atom: imshow needs vmin < vmax.
        scale = max(float(np.abs(atom).max()), np.finfo(np.float64).tiny)
        ax.imshow(atom.reshape(image_shape), cmap="gray", vmin=-scale, vmax=scale)
        _hide_ticks(ax)
    for ax in axes[atoms.shape[0] :]:
        ax.remove()
    return fig


def plot_top_activations(model, X, features, image_shape, n=8, fig=None):
    """The top-activating rows of ``X`` of some latents, as a grid of images.

    One row of the grid per latent, its ``n`` top-activating rows of ``X`` (see
    :func:`top_activating`) from left to right, each titled with its activation.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model; or, as a baseline, any fitted scikit-learn transformer with
        ``components_`` whose ``transform`` gives one column per component (PCA,
        MiniBatchDictionaryLearning, a random projection...).
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data to encode, dense or scipy.sparse CSR/CSC; its rows are images.
    features : sequence of int
        Indices of the latents to show, one grid row each.
    image_shape : tuple of (int, int) or (int, int, int)
        Height and width of one image, and its channels (1, 3 for RGB, 4 for RGBA) if
        it has several; their product is ``n_features``. Each image is drawn in its
        own range of values: a colour one is scaled onto [0, 1] by its smallest and
        largest values.
    n : int, default=8
        Number of rows of ``X`` per latent (at most ``n_samples``).
    fig : matplotlib.figure.Figure or None, default=None
        Figure to draw on (it should be empty); ``None`` makes a new one.

    Returns
    -------
    fig : matplotlib.figure.Figure
        ``len(features) * min(n, n_samples)`` Axes.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> from sksae.inspection import plot_top_activations
    >>> X = make_sparse_superposition(n_samples=500, n_features=16, n_sources=32,
    ...                               n_active=3, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5,
    ...                                    random_state=0).fit(X)
    >>> fig = plot_top_activations(sae, X, features=[0, 5], image_shape=(4, 4), n=3,
    ...                            fig=Figure())
    >>> len(fig.axes)
    6
    """
    plt = _pyplot("plot_top_activations")
    X = _validate(model, X)
    _check_n(n)
    _check_image_shape(image_shape, X.shape[1], channels=True)
    if is_int(features) or np.ndim(features) == 0:
        raise TypeError(f"features must be a list of latents, got {features!r}: pass [{features}].")
    features = list(features)
    if not features:
        raise ValueError("features must name at least one latent.")
    for feature in features:
        _check_feature(model, feature)
    # One pass over X for all the latents, rather than one per latent.
    sample_indices, activations = _top_per_feature(model, X, n)
    n_shown = sample_indices.shape[1]
    if fig is None:
        fig = plt.figure(figsize=(1.4 * n_shown, 1.6 * len(features)))
    axes = fig.subplots(len(features), n_shown, squeeze=False)
    for grid_row, feature in zip(axes, features, strict=True):
        images = as_dense(X[sample_indices[feature]])
        for ax, image, activation in zip(grid_row, images, activations[feature], strict=True):
            ax.imshow(_in_its_own_range(image.reshape(image_shape)), cmap="gray")
            ax.set_title(f"{activation:.3g}", fontsize="small")
            _hide_ticks(ax)
        grid_row[0].set_ylabel(f"latent {feature}")
    return fig


def _in_its_own_range(image):
    """A colour image scaled from its smallest to its largest value onto [0, 1], as
    ``imshow`` scales a grayscale one: it clips colour values to [0, 1], and showed
    pixels from 0 to 255, or standardised ones, white or black."""
    if image.ndim == 2 or image.shape[2] == 1:
        return image
    low, high = image.min(), image.max()
    return (image - low) / (high - low if high > low else 1.0)


def _check_model(model):
    """A fitted model with a dictionary (``components_``) to read."""
    check_is_fitted(model)
    if not hasattr(model, "components_"):
        advice = (
            ": pass its last step, pipeline[-1], and X transformed by pipeline[:-1]"
            if isinstance(model, Pipeline) and hasattr(model[-1], "components_")
            else ""
        )
        raise TypeError(
            "model must be a fitted SparseAutoencoderTransformer, or a transformer with "
            f"components_ as a baseline; got a {type(model).__name__}{advice}."
        )


def _validate(model, X):
    # As transform validates: the feature names and the number of features of X must be
    # those the model was fitted on, and for sksae's models its values within what they
    # can square (larger ones would top the rankings as inf or NaN codes).
    _check_model(model)
    if hasattr(model, "_validate_input"):
        return model._validate_input(X)
    return validate_data(
        model, X, accept_sparse=("csr", "csc"), dtype=(np.float64, np.float32), reset=False
    )


def _check_feature(model, feature):
    n_components = model.components_.shape[0]
    if not is_int(feature) or not 0 <= feature < n_components:
        raise ValueError(
            f"feature={feature!r} is not a latent of the model: it must be an integer in "
            f"[0, {n_components})."
        )


def _check_n(n):
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be a positive integer, got n={n!r}.")


def _check_image_shape(image_shape, n_features, channels=False):
    """``channels``: ``(height, width, channels)`` is allowed too, with the 1, 3 (RGB) or
    4 (RGBA) channels ``imshow`` draws."""
    shapes = "(height, width)" + (" or (height, width, channels)" if channels else "")
    channel_counts = " (1, 3 or 4 channels)" if channels else ""
    if not (
        isinstance(image_shape, tuple | list)
        and (len(image_shape) == 2 or (channels and len(image_shape) == 3))
        and all(is_int(side) and side > 0 for side in image_shape)
        and (len(image_shape) == 2 or image_shape[2] in (1, 3, 4))
    ):
        raise ValueError(
            f"image_shape must be a {shapes} tuple of positive integers{channel_counts}, "
            f"got {image_shape!r}."
        )
    if int(np.prod(image_shape)) != n_features:
        raise ValueError(
            f"image_shape={tuple(image_shape)} holds {int(np.prod(image_shape))} pixels, "
            f"but the model has n_features={n_features}."
        )


def _encoded_chunks(model, X):
    """Yield ``(start, codes)``: the dense codes of consecutive chunks of rows of ``X``.

    A chunk holds about ``_CHUNK_VALUES`` code values, whatever ``n_components``, so a
    pass over ``X`` takes bounded memory.
    """
    chunk_rows = rows_per_chunk(model.components_.shape[0], _CHUNK_VALUES)
    # sksae's models skip the validation that _validate already did; others transform.
    transform = getattr(model, "_transform_validated", model.transform)
    for start in range(0, X.shape[0], chunk_rows):
        with warnings.catch_warnings():
            # _validate checked the names of X's features; its chunks are arrays.
            warnings.filterwarnings("ignore", "X does not have valid feature names")
            # Nothing here keeps a reference to the chunk: the caller's is the only one.
            codes = transform(X[start : start + chunk_rows])
        # np.asarray: a baseline set to output pandas gives DataFrames.
        yield start, np.asarray(as_dense(codes))


def _merge_top(candidates, top_rows, start):
    """Each latent's top rows among its running top and a chunk of rows from ``start``.

    ``candidates`` is ``[n_components, n + chunk_rows]``: the running top values (their
    rows in ``top_rows``, ``[n_components, n]``, by decreasing value, ties by row), then
    the chunk's codes, transposed. The running top's rows all precede the chunk's, so a
    stable sort of the candidates in that order breaks ties by row, exactly as
    :func:`top_activating` does. ``candidates`` is overwritten.
    """
    n = top_rows.shape[1]
    np.negative(candidates, out=candidates)  # in place: sort decreasing without a copy
    order = np.argsort(candidates, axis=1, kind="stable")[:, :n]
    values = -np.take_along_axis(candidates, order, axis=1)
    from_top = np.take_along_axis(top_rows, np.minimum(order, n - 1), axis=1)
    rows = np.where(order < n, from_top, start + order - n)
    return values, rows


def _hide_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _pyplot(caller):
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"matplotlib is required for {caller}; pip install matplotlib") from exc
    return plt
