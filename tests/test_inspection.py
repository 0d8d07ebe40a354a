"""sksae.inspection: top activations, densities, label purity and plots, in bounded memory."""

import copy
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sksae import SparseAutoencoderTransformer, inspection
from sksae.datasets import make_sparse_superposition
from sksae.inspection import (
    feature_density,
    feature_label_purity,
    plot_dictionary,
    plot_feature_density,
    plot_top_activations,
    top_activating,
    top_activating_per_feature,
)


@pytest.fixture(scope="module")
def data():
    X, _, sources = make_sparse_superposition(
        n_samples=2000, n_features=16, n_sources=32, n_active=3, random_state=0, return_sources=True
    )
    return X, sources


@pytest.fixture(scope="module")
def model(data):
    X, _ = data
    return SparseAutoencoderTransformer(n_components=64, k=3, max_iter=5, random_state=0).fit(X)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 300 rows for a 64-latent model, so a 2000-row X takes 7 of them."""
    monkeypatch.setattr(inspection, "_CHUNK_VALUES", 64 * 300)


def hand_made_model(encoder_weights, encoder_bias, k=None):
    """A TopK model with the given encoder; its codes are the ``k`` largest entries of
    ``ReLU(W x + b)``, all of them by default."""
    n_components, n_features = np.shape(encoder_weights)
    rng = np.random.default_rng(0)
    model = SparseAutoencoderTransformer(
        n_components=n_components, k=k or n_components, max_iter=1, random_state=0
    ).fit(rng.standard_normal((64, n_features)))
    model.encoder_weights_ = np.asarray(encoder_weights, dtype=np.float64)
    model.encoder_bias_ = np.asarray(encoder_bias, dtype=np.float64)
    model.decoder_bias_ = np.zeros(n_features)
    return model


# Latent 0 reads feature 0, latent 1 feature 1, latent 2 never fires.
HAND_X = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 0.0], [0.0, 2.0], [-1.0, 3.0], [0.5, 0.0]])
HAND_LABELS = np.array(["a", "a", "b", "b", "c", "b"])


@pytest.fixture(scope="module")
def hand_model():
    return hand_made_model([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.0, -1.0])


def brute_force_top(codes, feature, n):
    order = np.argsort(-codes[:, feature], kind="stable")[:n]
    return order, codes[order, feature]


@pytest.mark.parametrize("n", [1, 20, 500])
def test_top_activating_matches_brute_force(model, data, small_chunks, n):
    X, _ = data
    codes = model.transform(X)
    for feature in [0, 17, 63]:
        rows, activations = top_activating(model, X, feature, n=n)
        expected_rows, expected_activations = brute_force_top(codes, feature, n)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(activations, expected_activations)


def test_top_activating_orders_ties_by_row_and_fills_with_zeros(hand_model):
    rows, activations = top_activating(hand_model, HAND_X, feature=0, n=6)
    np.testing.assert_array_equal(rows, [0, 1, 2, 5, 3, 4])
    np.testing.assert_array_equal(activations, [3.0, 2.0, 1.0, 0.5, 0.0, 0.0])
    rows, activations = top_activating(hand_model, HAND_X, feature=1, n=10)
    np.testing.assert_array_equal(rows, [4, 3, 1, 0, 2, 5])  # n > n_samples: all rows
    np.testing.assert_array_equal(activations, [3.0, 2.0, 1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("n", [1, 20, 500, 2500])
def test_per_feature_equals_single_feature_for_every_latent(model, data, monkeypatch, n):
    X, _ = data
    with monkeypatch.context() as patch:
        patch.setattr(inspection, "_CHUNK_VALUES", 64 * 300)  # 7 chunks to merge
        rows, activations = top_activating_per_feature(model, X, n=n)
    # top_activating in one chunk each: quicker, and chunking cannot change its result.
    assert rows.shape == activations.shape == (64, min(n, X.shape[0]))
    assert activations.dtype == X.dtype
    for feature in range(64):
        expected_rows, expected_activations = top_activating(model, X, feature, n=n)
        np.testing.assert_array_equal(rows[feature], expected_rows)
        np.testing.assert_array_equal(activations[feature], expected_activations)


def test_per_feature_on_hand_made_model_keeps_ties_in_row_order(hand_model, monkeypatch):
    monkeypatch.setattr(inspection, "_CHUNK_VALUES", 3 * 2)  # chunks of 2 rows
    rows, activations = top_activating_per_feature(hand_model, HAND_X, n=4)
    np.testing.assert_array_equal(rows, [[0, 1, 2, 5], [4, 3, 1, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(activations[0], [3.0, 2.0, 1.0, 0.5])
    np.testing.assert_array_equal(activations[2], np.zeros(4))


def test_sparse_input_sparse_output_and_float32_agree_with_dense(model, data, small_chunks):
    X, _ = data
    X32 = X.astype(np.float32)
    expected = top_activating_per_feature(model, X32, n=10)
    sparse_model = copy.deepcopy(model).set_params(sparse_output=True)
    for X_other in [sp.csr_array(X32), sp.csc_array(X32)]:
        for other_model in [model, sparse_model]:
            rows, activations = top_activating_per_feature(other_model, X_other, n=10)
            np.testing.assert_array_equal(rows, expected[0])
            np.testing.assert_array_equal(activations, expected[1])
            assert activations.dtype == np.float32
    np.testing.assert_array_equal(
        feature_density(sparse_model, sp.csr_array(X)), feature_density(model, X)
    )


def test_top_activating_per_feature_memory_stays_bounded(peak_memory):
    X = make_sparse_superposition(
        n_samples=50_000, n_features=16, n_sources=32, n_active=3, random_state=0
    ).astype(np.float32)
    model = SparseAutoencoderTransformer(n_components=1024, k=4, max_iter=1, random_state=0).fit(
        X[:2000]
    )
    full_code_bytes = X.shape[0] * 1024 * np.dtype(np.float32).itemsize  # 205 MB
    top_activating_per_feature(model, X[:10])  # imports and caches are not the point
    (rows, _), peak = peak_memory(lambda: top_activating_per_feature(model, X))
    assert rows.shape == (1024, 20)
    assert peak < full_code_bytes / 3, f"peak {peak / 1e6:.0f} MB"


def test_feature_density_matches_dense_computation(model, data, small_chunks):
    X, _ = data
    density = feature_density(model, X)
    np.testing.assert_allclose(density, (model.transform(X) != 0).mean(axis=0))
    assert density.dtype == np.float64
    np.testing.assert_allclose(feature_density(model, X[:1]), model.transform(X[:1])[0] != 0)


def test_purity_is_one_when_each_label_has_its_own_direction():
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((6, 16))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # Label 5 has fewer rows than n: its latent's top 20 are padded with inactive rows of
    # other labels, which must not count.
    labels = rng.permutation(np.repeat(np.arange(6), [100, 100, 100, 100, 100, 5]))
    X = rng.exponential(1.0, size=(labels.size, 1)) * directions[labels]
    # Latent i reads direction i; with k=1 only the latent of a row's own label fires.
    model = hand_made_model(directions, np.zeros(6), k=1)
    np.testing.assert_array_equal(feature_label_purity(model, X, labels, n=20), np.ones(6))
    string_labels = np.array(["zero", "one", "two", "three", "four", "five"])[labels]
    np.testing.assert_array_equal(feature_label_purity(model, X, string_labels), np.ones(6))


def test_a_scikit_learn_baseline_is_inspected_through_its_transform(data, small_chunks):
    from sklearn.decomposition import PCA

    X, _ = data
    pca = PCA(n_components=5, random_state=0).fit(X)
    codes = pca.transform(X)
    rows, activations = top_activating_per_feature(pca, X, n=7)
    # In X's dtype, as top_activating's, whatever the baseline's codes come in.
    float64_pca = PCA(n_components=5, random_state=0).fit(X.astype(np.float64))
    assert top_activating_per_feature(float64_pca, X.astype(np.float32), n=7)[1].dtype == np.float32
    expected = np.argsort(-codes, axis=0, kind="stable")[:7].T
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(activations, np.take_along_axis(codes.T, expected, axis=1))
    labels = np.arange(len(X)) % 3
    purity = feature_label_purity(pca, X, labels, n=7)
    assert purity.shape == (5,) and np.all((purity > 0) & (purity <= 1))
    # set_output's pandas codes are inspected as the arrays they hold.
    pytest.importorskip("pandas")
    pandas_pca = clone(pca).set_output(transform="pandas").fit(X)
    np.testing.assert_array_equal(top_activating(pandas_pca, X, 2, n=7)[0], expected[2])
    np.testing.assert_array_equal(top_activating_per_feature(pandas_pca, X, n=7)[0], expected)


def test_n_beyond_the_rows_allocates_for_the_rows_alone(model, data):
    X, _ = data
    # (n_components, n) placeholders would be 58 TiB.
    rows, activations = top_activating_per_feature(model, X[:10], n=10**12)
    assert rows.shape == activations.shape == (64, 10)
    assert feature_label_purity(model, X[:10], np.zeros(10), n=10**12).shape == (64,)


def test_purity_hand_computed(hand_model):
    # Latent 0 is active on rows 0, 1, 2, 5 (a, a, b, b); latent 1 on 4, 3, 1 (c, b, a).
    np.testing.assert_allclose(
        feature_label_purity(hand_model, HAND_X, HAND_LABELS, n=3), [2 / 3, 1 / 3, np.nan]
    )
    np.testing.assert_allclose(
        feature_label_purity(hand_model, HAND_X, HAND_LABELS, n=20), [2 / 4, 1 / 3, np.nan]
    )
    integer_labels = np.array([7, 7, 1, 1, 5, 1])
    np.testing.assert_allclose(
        feature_label_purity(hand_model, HAND_X, list(integer_labels), n=20),
        [2 / 4, 1 / 3, np.nan],
    )


def test_purity_is_nan_for_a_dead_latent(model, data):
    X, sources = data
    dead = copy.deepcopy(model)
    dead.encoder_bias_ = dead.encoder_bias_.copy()
    dead.encoder_bias_[5] = -1e6
    purity = feature_label_purity(dead, X, sources.argmax(axis=1))
    assert np.isnan(purity[5])
    alive = feature_density(dead, X) > 0
    assert not np.isnan(purity[alive]).any()
    assert np.all((purity[alive] > 0) & (purity[alive] <= 1))


def test_clear_errors(model, data, hand_model):
    X, _ = data
    for feature in [64, -1, 1.5, True]:
        with pytest.raises(ValueError, match=rf"feature={feature}"):
            top_activating(model, X, feature)
    for n in [0, -3, True]:
        with pytest.raises(ValueError, match=rf"n={n}"):
            top_activating(model, X, 0, n=n)
        with pytest.raises(ValueError, match=rf"n={n}"):
            top_activating_per_feature(model, X, n=n)
    with pytest.raises(ValueError, match="one label per row"):
        feature_label_purity(model, X, np.zeros(X.shape[0] - 1))
    with pytest.raises(ValueError, match="1-D"):
        feature_label_purity(model, X, np.zeros((X.shape[0], 2)))
    with pytest.raises(ValueError, match="image_shape"):
        plot_dictionary(model, (3, 5))
    for image_shape in [16, (16,), (2, 2, 4)]:
        with pytest.raises(ValueError, match=r"image_shape must be a \(height, width\) tuple"):
            plot_dictionary(model, image_shape)
    for image_shape in [16, (16,), (2, 4, 2), (1, 2, 2, 4)]:
        message = r"\(height, width\) or \(height, width, channels\) .* \(1, 3 or 4 channels\)"
        with pytest.raises(ValueError, match=message):
            plot_top_activations(model, X, [0], image_shape)
    with pytest.raises(ValueError, match="feature=64"):
        plot_top_activations(model, X, [0, 64], (4, 4))
    with pytest.raises(TypeError, match=r"features must be a list of latents, got 0: pass \[0\]"):
        plot_top_activations(model, X, 0, (4, 4))
    with pytest.raises(TypeError, match="features must be a list of latents, got array"):
        plot_top_activations(model, X, np.array(1), (4, 4))
    # As transform does: values whose squares overflow would rank first as inf or NaN.
    with pytest.raises(ValueError, match="beyond what"):
        top_activating(model, np.vstack([X[:1] * 1e160, X[1:]]), 0)
    with pytest.raises(ValueError, match="16 features"):
        feature_density(model, X[:, :3])
    with pytest.raises(NotFittedError):
        feature_density(SparseAutoencoderTransformer(), X)
    # A pipeline ending in the model has no components_: an AttributeError from within.
    scaler = StandardScaler().fit(X)
    with pytest.raises(TypeError, match=r"got a Pipeline: pass its last step, pipeline\[-1\]"):
        top_activating(make_pipeline(scaler, model), X, 0)
    with pytest.raises(TypeError, match=r"with components_ as a baseline; got a StandardScaler\.$"):
        plot_dictionary(scaler, (4, 4))
    with pytest.raises(TypeError, match=r"got a Pipeline\.$"):  # its last step has none either
        feature_density(make_pipeline(scaler, StandardScaler().fit(X)), X)


def test_plots_need_matplotlib(model, data, monkeypatch):
    X, _ = data
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="matplotlib is required for plot_dictionary"):
        plot_dictionary(model, (4, 4))
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_feature_density(model, X)


@pytest.fixture
def pyplot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def n_images(fig):
    return sum(len(ax.images) for ax in fig.axes)


def test_plot_feature_density(model, data, pyplot):
    from matplotlib.axes import Axes

    X, _ = data
    dead = copy.deepcopy(model)
    dead.encoder_bias_ = dead.encoder_bias_.copy()
    dead.encoder_bias_[[3, 9]] = -1e6
    n_dead = int((feature_density(dead, X) == 0).sum())
    assert n_dead >= 2
    ax = plot_feature_density(dead, X, bins=10)
    assert isinstance(ax, Axes)
    assert len(ax.patches) == 10
    assert sum(patch.get_height() for patch in ax.patches) == 64 - n_dead
    assert ax.get_title().startswith(f"{n_dead} dead")
    _, given = pyplot.subplots()
    assert plot_feature_density(model, X, ax=given) is given


def test_plot_dictionary(model, pyplot):
    from matplotlib.figure import Figure

    fig = plot_dictionary(model, (4, 4), n_atoms=10)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_images(fig) == 10
    image = fig.axes[3].images[0]
    np.testing.assert_array_equal(image.get_array(), model.components_[3].reshape(4, 4))
    low, high = image.get_clim()
    assert low == -high
    assert not fig.axes[0].get_xticks().size
    given = pyplot.figure()
    assert plot_dictionary(model, (2, 8), n_atoms=100, fig=given) is given
    assert n_images(given) == 64


def test_plot_dictionary_draws_a_baseline_with_sparse_atoms(data, pyplot):
    # A sparse random projection's components_ are a sparse matrix: imshow failed on it
    # with matplotlib's "dtype object", after the subplots were added to the figure.
    from sklearn.random_projection import SparseRandomProjection

    projection = SparseRandomProjection(n_components=8, random_state=0).fit(data[0])
    fig = plot_dictionary(projection, (4, 4), n_atoms=3)
    expected = projection.components_[[2]].toarray().reshape(4, 4)
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), expected)


def test_plot_top_activations(model, data, pyplot):
    from matplotlib.figure import Figure

    X, _ = data
    features = [0, 3, 5]
    fig = plot_top_activations(model, X, features, (4, 4), n=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_images(fig) == 12
    rows, activations = top_activating(model, X, 3, n=4)
    second_row = fig.axes[4:8]
    assert [ax.get_title() for ax in second_row] == [f"{a:.3g}" for a in activations]
    np.testing.assert_array_equal(second_row[0].images[0].get_array(), X[rows[0]].reshape(4, 4))
    assert n_images(plot_top_activations(model, X[:3], [1], (4, 4), n=8)) == 3
    # Images with channels: RGBA, and a single one.
    for image_shape in [(2, 2, 4), (4, 4, 1)]:
        assert n_images(plot_top_activations(model, X, [1], image_shape, n=2)) == 2
    # Colour values from 0 to 255: imshow clipped them to [0, 1], a white image.
    pixels = 255 * (X - X.min()) / np.ptp(X)
    rows, _ = top_activating(model, pixels, 1, n=1)
    image = pixels[rows[0]]
    fig = plot_top_activations(model, pixels, [1], (2, 2, 4), n=1)
    drawn = fig.axes[0].images[0].get_array()
    expected = (image - image.min()) / np.ptp(image)
    np.testing.assert_allclose(drawn, expected.reshape(2, 2, 4))


@pytest.mark.parametrize("baseline", [False, True])
def test_dataframes_keep_their_feature_names(data, pyplot, recwarn, baseline):
    from sklearn.decomposition import PCA

    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(data[0], columns=[f"x{i}" for i in range(16)])
    if baseline:
        named = PCA(n_components=5, random_state=0).fit(X)
    else:
        named = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=2, random_state=0)
        named.fit(X)
    rows, _ = top_activating_per_feature(named, X, n=3)
    assert rows.shape == (named.components_.shape[0], 3)
    # Every function that takes X, those that rank the rows of X through others too.
    feature_density(named, X)
    top_activating(named, X, feature=1, n=3)
    feature_label_purity(named, X, data[1].argmax(axis=1), n=3)
    plot_top_activations(named, X, [0, 1], (4, 4), n=2)
    assert not [w for w in recwarn if "feature names" in str(w.message)]
    with pytest.raises(ValueError, match="feature names"):
        feature_density(named, X.rename(columns={"x0": "other"}))
