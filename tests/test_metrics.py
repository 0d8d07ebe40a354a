import numpy as np
import pytest
import scipy.sparse as sp

from sksae._nn.batches import column_means
from sksae.metrics import code_bytes, compression_ratio, dead_fraction, fvu, l0, mmcs


def test_fvu_hand_computed():
    X = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])  # column means 2 and 3
    X_hat = np.array([[1.0, 2.0], [3.0, 3.0], [2.0, 3.0]])
    # residual 0 + 1 + 4 = 5; total variance (1 + 1 + 0) + (1 + 1 + 4) = 8
    assert fvu(X, X_hat) == pytest.approx(5 / 8)
    assert fvu(X, X) == 0.0
    assert fvu(X, np.tile(X.mean(axis=0), (3, 1))) == pytest.approx(1.0)


def test_fvu_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        fvu(np.zeros((3, 2)), np.zeros((3, 3)))


def test_fvu_of_rows_all_the_same_is_infinite_or_nan():
    # The plain mean of three rows of 0.1 is 0.10000000000000002: a variance of rounding
    # errors would give a huge finite FVU.
    X = np.full((3, 2), 0.1)
    assert fvu(X, X + 1) == np.inf
    assert np.isnan(fvu(X, X))
    assert fvu(sp.csr_array(X), X + 1) == np.inf
    assert column_means(sp.coo_array(X)).tolist() == [0.1, 0.1]


def test_l0_dense_and_sparse():
    codes = np.array([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, -1.0]])
    assert l0(codes) == pytest.approx(4 / 3)
    assert l0(sp.csr_array(codes)) == pytest.approx(4 / 3)


def test_l0_and_code_bytes_ignore_explicitly_stored_zeros():
    # A CSR matrix may store zeros (a thresholded codes.data, a sum that cancelled):
    # they are not active latents, and a CSR array written without them would not
    # store them. Here every entry is stored, 12 against 3 nonzeros.
    dense = np.array([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    dense = dense.astype(np.float32)
    every_entry = sp.csr_array(
        (dense.ravel(), np.tile(np.arange(4), 3), np.arange(0, 13, 4)), shape=(3, 4)
    )
    assert every_entry.nnz == 12
    for codes in [every_entry, every_entry.tocsc()]:
        assert l0(codes) == l0(dense) == 1.0
        # 3 * (4 value bytes + 1 column byte) + 4 * 1 pointer byte
        assert code_bytes(codes) == code_bytes(dense) == 19
        X = np.ones((3, 8), dtype=np.float32)
        assert compression_ratio(X, codes) == compression_ratio(X, dense) == 96 / 19


def test_dead_fraction_dense_and_sparse_ignores_explicit_zeros():
    codes = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 3.0, 0.0]])
    assert dead_fraction(codes) == 0.5
    explicit_zero = sp.csr_array(
        (np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 4)
    )
    assert dead_fraction(explicit_zero) == 0.75


def test_code_metrics_sum_duplicate_entries_without_changing_the_matrix():
    # A CSR matrix may store an entry twice (a COO matrix converted without summing):
    # +1 and -1 stored in column 0 are a zero, and column 0 is dead.
    codes = sp.csr_matrix(
        (np.array([1.0, -1.0, 2.0]), np.array([0, 0, 2]), np.array([0, 3])), shape=(1, 3)
    )
    dense = codes.toarray()
    assert dense.tolist() == [[0.0, 0.0, 2.0]]
    assert dead_fraction(codes) == dead_fraction(dense) == pytest.approx(2 / 3)
    assert l0(codes) == l0(dense) == 1.0
    assert code_bytes(codes) == code_bytes(dense)
    # scipy's count_nonzero sums the duplicates in place: the caller's matrix would change.
    assert (codes.nnz, codes.data.tolist()) == (3, [1.0, -1.0, 2.0])


def test_mmcs_hand_computed():
    true = np.array([[1.0, 0.0], [0.0, 1.0]])
    learned = np.array([[3.0, 4.0], [0.0, -2.0]])  # cosines with true: (0.6, 0.8), (0, -1)
    assert mmcs(true, learned) == pytest.approx((0.6 + 1.0) / 2)
    assert mmcs(true, true) == 1.0
    with pytest.raises(ValueError, match="features"):
        mmcs(true, np.ones((2, 3)))


def test_mmcs_counts_a_zero_direction_as_orthogonal_to_everything():
    # A zero row has no direction: its cosine with anything is 0, not the NaN of 0 / 0.
    # A zero learned atom (dead, or pruned) recovers nothing and changes nothing...
    true = np.array([[1.0, 0.0], [0.0, 1.0]])
    learned = np.array([[3.0, 4.0]])  # cosines 0.6 and 0.8
    with_zero_atom = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert mmcs(true, with_zero_atom) == mmcs(true, learned) == pytest.approx(0.7)
    assert mmcs(true, np.zeros((2, 2))) == 0.0
    # ... and a zero true direction is recovered by nothing: it counts 0 in the mean.
    assert mmcs(np.array([[1.0, 0.0], [0.0, 0.0]]), learned) == pytest.approx(0.6 / 2)


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e-320])
def test_mmcs_of_huge_or_subnormal_directions(scale):
    # Their sums of squares overflow or underflow: directions are the same at any scale.
    true = np.array([[1.0, 1.0], [1.0, 0.0]])
    learned = np.array([[3.0, 4.0], [1.0, 1.0]])
    expected = mmcs(true, learned)
    assert mmcs(scale * true, learned) == mmcs(true, scale * learned) == expected
    assert mmcs(np.array([[scale, 0.0]]), np.array([[1.0, 0.0]])) == 1.0


@pytest.mark.parametrize("offset", [1e9, -1e12])
@pytest.mark.parametrize("container", [np.asarray, sp.csr_array])
def test_fvu_of_data_far_from_the_origin_is_as_exact_as_the_plain_formula(offset, container):
    # X and X_hat agree to 9 or 12 digits: scaling them by anything but a power of two
    # before their difference rounds them, and the FVU came out 1e-7 and 3e-5 off; the
    # mean, rounded to float64, added 5e-10 more at 1e12.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    X_hat = X + 0.1 * rng.standard_normal(X.shape)
    X, X_hat = X + offset, X_hat + offset
    # Exact differences (Sterbenz): the data near the origin, where the plain formula
    # is exact to about 1e-15.
    near, near_hat = X - offset, X_hat - offset
    plain = np.square(near - near_hat).sum() / np.square(near - near.mean(axis=0)).sum()
    assert fvu(container(X), X_hat) == pytest.approx(plain, rel=1e-12)


@pytest.mark.parametrize("scale", [1e306, 1e160, 1e-170])
@pytest.mark.parametrize("container", [np.asarray, sp.csr_array])
def test_fvu_of_huge_or_tiny_data(scale, container):
    # Their squares overflow or underflow: the FVU came out NaN; and their differences
    # near float64's largest: 0.0 then.
    X = np.random.default_rng(0).standard_normal((50, 4))
    assert fvu(container(scale * X), scale * X / 2) == pytest.approx(fvu(X, X / 2), rel=1e-12)
    assert fvu(container(scale * X), np.zeros_like(X)) == pytest.approx(
        fvu(X, np.zeros_like(X)), rel=1e-12
    )
    assert fvu(container([[1.5e308], [-1.5e308]]), [[0.75e308], [-0.75e308]]) == 0.25


def test_mmcs_of_a_direction_and_itself_is_one():
    assert mmcs([[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]]) == 1.0  # not 1.0000000000000002


def test_fvu_and_mmcs_take_sparse_matrices():
    X = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    X_hat = np.array([[1.0, 2.0], [3.0, 3.0], [2.0, 0.0]])
    assert fvu(X, sp.csr_array(X_hat)) == fvu(sp.csr_array(X), sp.csc_array(X_hat)) == fvu(X, X_hat)
    assert mmcs(sp.csr_array(X), sp.coo_array(X_hat)) == mmcs(X, X_hat)


@pytest.mark.parametrize(
    "codes", [np.zeros((0, 4)), np.zeros((3, 0)), np.zeros(4), sp.csr_array((0, 4))]
)
def test_metrics_reject_matrices_without_rows_or_columns(codes):
    for metric in (l0, dead_fraction, code_bytes, lambda codes: fvu(codes, codes)):
        with pytest.raises(ValueError, match="at least one row and one column"):
            metric(codes)
    with pytest.raises(ValueError, match="X must be a 2-D array"):
        compression_ratio(codes, np.ones((3, 4)))


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.array([[np.nan, 1.0]]), ValueError, "NaN or infinity"),
        (sp.csr_array(np.array([[np.inf, 0.0]])), ValueError, "NaN or infinity"),
        (np.array([[1j, 1.0]]), TypeError, "real numbers, got an array of dtype complex128"),
        (np.array([["a", "b"]]), TypeError, "real numbers, got an array of dtype <U1"),
    ],
)
def test_metrics_reject_values_that_are_not_finite_real_numbers(bad, error, message):
    # NaN came out as an FVU of NaN and a cosine of NaN, complex numbers lost their
    # imaginary parts: no error said why.
    good = np.ones((1, 2))
    metrics = [
        l0,
        dead_fraction,
        code_bytes,
        lambda A: fvu(A, good),
        lambda A: fvu(good, A),
        lambda A: mmcs(A, good),
        lambda A: mmcs(good, A),
        lambda A: compression_ratio(A, good),
    ]
    for metric in metrics:
        with pytest.raises(error, match=message):
            metric(bad)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr", "lil", "dok", "dia"])
def test_metrics_take_every_sparse_format(fmt):
    # LIL's data are lists (a TypeError), DOK has no data (an AttributeError).
    codes = np.array([[0.0, 1.5, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    sparse = sp.csr_array(codes).asformat(fmt)
    X = np.array([[1.0, 2.0, 0.0], [3.0, 2.0, 1.0], [2.0, 5.0, 1.0]])
    assert l0(sparse) == l0(codes)
    assert dead_fraction(sparse) == dead_fraction(codes)
    assert code_bytes(sparse) == code_bytes(codes)
    assert fvu(X, sparse) == fvu(X, codes)
    assert mmcs(sparse, X) == mmcs(codes, X)


def test_a_nan_in_a_dia_matrix_s_padding_is_not_a_value():
    # Diagonal 1 of a 3 x 3 matrix holds 2 values; the first of the 3 stored is padding.
    padded = sp.dia_array((np.array([[np.nan, 1.0, 2.0]]), [1]), shape=(3, 3))
    assert l0(padded) == pytest.approx(2 / 3)


@pytest.mark.skipif(
    np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="no wider long double"
)
def test_fvu_and_mmcs_reject_values_beyond_float64():
    # Finite in long double, infinite once cast: the results were NaN, with warnings.
    X = np.array([["1e400"], ["0"]]).astype(np.longdouble)
    with pytest.raises(ValueError, match="beyond the float64 range"):
        fvu(X, np.ones((2, 1)))
    with pytest.raises(ValueError, match="beyond the float64 range"):
        mmcs(X.T, np.ones((1, 2)))


def test_code_metrics_take_lists_and_dataframes():
    pd = pytest.importorskip("pandas")
    codes = [[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]
    assert code_bytes(pd.DataFrame(codes)) == code_bytes(np.array(codes)) == code_bytes(codes)
    X = pd.DataFrame(np.ones((2, 4)))
    assert compression_ratio(X, pd.DataFrame(codes)) == compression_ratio(X.to_numpy(), codes)


def test_metrics_take_dataframes_of_nullable_dtypes():
    """numpy reads pandas's nullable dtypes as objects: they were refused as not numbers."""
    pd = pytest.importorskip("pandas")
    X = np.array([[1.0, 0.0, 2.0], [-1.0, 3.0, 0.0]], dtype=np.float32)
    codes = np.array([[0, 2, 0, 0], [1, 0, 0, 5]])
    assert fvu(pd.DataFrame(X, dtype="Float32"), 0.5 * X) == fvu(X, 0.5 * X)
    assert l0(pd.DataFrame(codes, dtype="Int64")) == l0(codes) == 1.5
    assert code_bytes(pd.DataFrame(X, dtype="Float32")) == code_bytes(X)
    assert mmcs(pd.DataFrame(X, dtype="Float64"), X) == pytest.approx(1.0)
    # A Series is 1-D, whatever its dtype: its dtypes are no list of columns.
    for dtype in ["float64", "Float32"]:
        with pytest.raises(ValueError, match="codes must be a 2-D array"):
            l0(pd.Series([1.0, 2.0, 0.0], dtype=dtype))
    # A missing value is refused as NaN is, whatever the column's dtype.
    for dtype in ["Float64", "Int64"]:
        with pytest.raises(ValueError, match="X holds NaN"):
            fvu(pd.DataFrame([[1, None], [0, 2]], dtype=dtype), X[:, :2])


def test_mmcs_rejects_empty_directions():
    with pytest.raises(ValueError, match="learned_directions must be a 2-D array"):
        mmcs(np.eye(2), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="true_directions must be a 2-D array"):
        mmcs(np.ones(2), np.eye(2))
    with pytest.raises(ValueError, match="at least one row and one column"):
        mmcs(np.zeros((2, 0)), np.zeros((2, 0)))


@pytest.mark.parametrize("n_components", [200, 300, 70_000])
def test_code_bytes_is_what_the_csr_arrays_take(n_components):
    rng = np.random.default_rng(0)
    codes = sp.random_array((50, n_components), density=0.05, rng=rng, format="csr")
    codes = codes.astype(np.float32)
    stored = (
        codes.data.astype(np.float16).nbytes
        + codes.indices.astype(np.min_scalar_type(n_components - 1)).nbytes
        + codes.indptr.astype(np.min_scalar_type(codes.nnz)).nbytes
    )
    assert code_bytes(codes, value_dtype=np.float16) == stored
    assert code_bytes(codes.toarray(), value_dtype=np.float16) == stored
    X = np.zeros((50, 64))
    assert compression_ratio(X, codes, value_dtype=np.float16) == pytest.approx(X.nbytes / stored)
    # A sparse X counts as the dense array it stands for.
    assert compression_ratio(sp.csr_array(X), codes, value_dtype=np.float16) == pytest.approx(
        X.nbytes / stored
    )


def test_compression_ratio_needs_one_code_per_row():
    with pytest.raises(ValueError, match="same number of rows"):
        compression_ratio(np.zeros((3, 2)), np.zeros((4, 8)))
