"""From arrays to torch batches, and row-wise maps over arrays in bounded memory.

Training data is a :class:`DenseRows` (one tensor on the device; batches are views or
one gather) or a :class:`HostRows` (a memory map or a scipy.sparse matrix left on the
host, read, densified and cast one batch at a time); :func:`training_rows` picks. Both
give ``len``, ``take(index)`` for a slice or a tensor of row indices, and the
statistics the loop reports against.
"""

import mmap

import numpy as np
import scipy.sparse as sp
import torch

#: Rows per inference chunk. Every chunk is zero-padded to exactly this many rows: a
#: lone row would take a different BLAS path (gemv) than a block and could differ in the
#: last bits, so fixed-size chunks make ``f(X)[i]`` bitwise equal to ``f(X[i:i+1])``
#: wherever the BLAS rounds a row alike at every position in a block. The MKL does but
#: for float32 products into 8 columns or fewer (latents, here) on an AVX-512 CPU, and
#: for float64 products over an odd number of columns from 9 on (features) on an AVX2
#: one, whose rows differ by position (by its parity, for the latter) in the last bit.
INFERENCE_CHUNK_ROWS = 256

#: Values (rows x features) that a statistic over the data densifies at a time.
CHUNK_VALUES = 2**20


def rows_per_chunk(n_features, values=CHUNK_VALUES):
    """Rows of ``n_features`` columns that fit in ``values`` values (at least one)."""
    return max(1, values // max(n_features, 1))


def squared_norm_sum(rows):
    """``sum_i ||rows_i||^2`` in float64, each row's norm taken in the rows' dtype.

    A float64 sum of the squares of ``rows`` would first copy them to float64, then
    square them into another copy: 30 times slower for the variance of 65,536 x 512
    float32 values (280 against 8 ms), for digits that no FVU shows (the relative error
    stays near that of the dtype).

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.batches import squared_norm_sum
    >>> squared_norm_sum(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    tensor(26., dtype=torch.float64)
    """
    return torch.linalg.vector_norm(rows, dim=1).square().sum(dtype=torch.float64)


def to_tensor(X, device, dtype=None):
    """A numpy array as a contiguous torch tensor on ``device``, in ``dtype`` (a torch
    dtype; default: that of ``X``).

    No copy on the CPU when ``X`` is C-contiguous, writeable, in the machine's byte order
    and in ``dtype``; a read-only array (a memory map, say) is copied, as torch tensors
    cannot be read-only, and so is a big-endian one, which torch cannot read.
    """
    # np.ascontiguousarray would make a 0-d array 1-d.
    X = np.require(X, dtype=X.dtype.newbyteorder("="), requirements="C")
    if not X.flags.writeable:
        X = X.copy()
    return torch.from_numpy(X).to(device, dtype)


def as_dense(X):
    """``X`` as a numpy array, densifying a scipy.sparse matrix in C order: a CSC
    matrix's own would be in Fortran order, which numpy sums in another order than the
    dense twin's rows (the fits would differ in the last bits)."""
    return X.toarray(order="C") if sp.issparse(X) else X


def is_memory_mapped(X):
    """Whether the numpy array ``X`` reads a memory map (is one, or a view of one).

    Examples
    --------
    >>> import numpy as np
    >>> from sksae._nn.batches import is_memory_mapped
    >>> is_memory_mapped(np.zeros(3))
    False
    """
    while X is not None:
        if isinstance(X, np.memmap | mmap.mmap):
            return True
        X = getattr(X, "base", None)
    return False


def training_rows(X, device, dtype):
    """The rows of a numpy array, a memory map or a scipy.sparse matrix, for training in
    the torch ``dtype``.

    A memory map stays on the host whatever its layout, mode and dtype: a copy of it
    whole, to the device, in C order or in ``dtype``, is what it exists to avoid.
    """
    if sp.issparse(X) or is_memory_mapped(X) or not X.flags.writeable:
        return HostRows(X, device, dtype)
    return DenseRows(to_tensor(X, device, dtype))


class DenseRows:
    """Rows of one dense tensor: batches are views (slices) or one gather (indices).

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.batches import DenseRows
    >>> rows = DenseRows(torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    >>> len(rows), rows.take(torch.tensor([1])).tolist(), round(rows.variance(), 6)
    (2, [[2.0, 0.0]], 2.0)
    """

    def __init__(self, tensor):
        self.tensor = tensor
        self._variance = None

    def __len__(self):
        return self.tensor.shape[0]

    @property
    def device(self):
        return self.tensor.device

    def take(self, index):
        return self.tensor[index]

    def mean(self):
        """The mean row, computed as :func:`column_means` computes it (exactly the value
        of a constant column), by chunks, returned in the rows' dtype.

        Each chunk's deviations are summed in the rows' dtype: in float64 the mean took
        30 times as long on the CPU (390 against 14 ms at 65,536 x 512 float32), and an
        error in the mean changes the squared deviations around it to second order only.
        """
        first, chunk_rows = self.tensor[0], rows_per_chunk(self.tensor.shape[1])
        deviation_sums = sum(
            (self.tensor[start : start + chunk_rows] - first).sum(dim=0).double()
            for start in range(0, len(self), chunk_rows)
        )
        return (first.double() + deviation_sums / len(self)).to(self.tensor.dtype)

    def variance(self):
        """Mean squared distance of a row to the mean row (the denominator of FVU).

        Computed once, chunk by chunk: no temporary the size of the data. The squares
        are taken in the rows' dtype, unless they are so small there (float32 values
        below about 1e-16) that they lose digits or underflow: then in float64.
        """
        if self._variance is None:
            mean, chunk_rows = self.mean(), rows_per_chunk(self.tensor.shape[1])

            def squared_deviations(dtype):
                return sum(
                    squared_norm_sum((self.tensor[start : start + chunk_rows] - mean).to(dtype))
                    for start in range(0, len(self), chunk_rows)
                ).item()

            total = squared_deviations(self.tensor.dtype)
            finfo = torch.finfo(self.tensor.dtype)
            if total < finfo.tiny / finfo.eps * self.tensor.numel():
                total = squared_deviations(torch.float64)
            self._variance = total / len(self)
        return self._variance


class HostRows:
    """Rows left on the host (a memory map, a scipy.sparse matrix), read one batch at a time.

    Only the rows of a batch are copied, densified if sparse, cast to ``dtype`` (a torch
    dtype) and moved to the device, so data larger than memory, or than its dense form,
    trains in bounded memory.
    Shuffled batches read scattered rows, which a disk serves more slowly than a
    contiguous file.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from sksae._nn.batches import HostRows
    >>> import torch
    >>> rows = HostRows(sp.csr_array([[0.0, 2.0], [2.0, 0.0]]), "cpu", torch.float32)
    >>> rows.take(slice(0, 1)), rows.variance()
    (tensor([[0., 2.]]), 2.0)
    """

    def __init__(self, X, device, dtype):
        self.X = sp.csr_array(X) if sp.issparse(X) else X
        self.device = torch.device(device)
        self.dtype = dtype
        self._variance = None

    def __len__(self):
        return self.X.shape[0]

    def take(self, index):
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return to_tensor(as_dense(self.X[index]), self.device, self.dtype)

    def variance(self):
        if self._variance is None:  # a pass over the data: once
            self._variance = squared_deviation_sum(self.X) / len(self)
        return self._variance


def column_means(X):
    """The mean row of a numpy array or scipy.sparse matrix, in float64, without a dense
    copy of ``X``.

    It is the first row plus the mean deviation from it, which is exactly the value of
    a constant column, where a plain mean is not: three rows of 0.1 average to
    0.10000000000000002, and data whose rows are all the same would then have a
    variance of rounding errors, not zero.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from sksae._nn.batches import column_means
    >>> X = np.array([[0.0, 2.0], [2.0, 0.0], [4.0, 0.0]])
    >>> column_means(X).tolist(), column_means(sp.csr_array(X)).tolist()
    ([2.0, 0.6666666666666667], [2.0, 0.6666666666666667])
    >>> column_means(np.full((3, 1), 0.1)).tolist(), np.full((3, 1), 0.1).mean(axis=0).tolist()
    ([0.1], [0.10000000000000002])
    """
    if sp.issparse(X):
        X = sp.csr_array(X)  # COO and DIA matrices have no rows to slice
    first = as_dense(X[:1]).astype(np.float64).ravel()
    deviation_sums = np.zeros(X.shape[1])
    if sp.issparse(X):
        # Not X.mean(dtype=np.float64): scipy sums in the matrix's own dtype and casts the
        # result, so float32 round-off grows with the number of rows.
        stored_per_column = np.zeros(X.shape[1])
        for columns, values in _stored_entries(X):
            deviation_sums += np.bincount(
                columns, weights=values - first[columns], minlength=X.shape[1]
            )
            stored_per_column += np.bincount(columns, minlength=X.shape[1])
        deviation_sums -= (X.shape[0] - stored_per_column) * first  # the implicit zeros
    else:
        chunk_rows = rows_per_chunk(X.shape[1])
        for start in range(0, X.shape[0], chunk_rows):
            deviation_sums += (X[start : start + chunk_rows] - first).sum(axis=0)
    return first + deviation_sums / X.shape[0]


def largest_magnitude(X):
    """``max |X|`` of a numpy array or scipy.sparse matrix, as a float, without a
    temporary of ``|X|``. A sparse matrix must be in canonical format: its ``max`` and
    ``min`` would sum duplicate entries in place.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae._nn.batches import largest_magnitude
    >>> largest_magnitude(np.array([[1.0, -3.0], [2.0, 0.0]]))
    3.0
    """
    return max(abs(float(X.max())), abs(float(X.min())))


def squared_deviation_sum(X, *, scale=1.0):
    """``sum_i ||x_i - mean(X)||^2``, in units of ``scale`` (the squares of
    ``(x_i - mean) / scale``), in float64, without a dense copy of ``X``.

    Dense: by chunks of about a million values. Sparse: per column, the squared
    deviations of the stored entries plus ``mean^2`` for each implicit zero; the shortcut
    ``sum ||x||^2 - n ||mean||^2`` would cancel catastrophically for data far from the
    origin.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from sksae._nn.batches import squared_deviation_sum
    >>> X = np.array([[0.0, 2.0], [2.0, 0.0]])
    >>> squared_deviation_sum(X), squared_deviation_sum(sp.csr_array(X))
    (4.0, 4.0)
    """
    mean = column_means(X)
    total, deviation_sums = 0.0, np.zeros(X.shape[1])
    if sp.issparse(X):
        stored_per_column = np.zeros(X.shape[1])
        for columns, values in _stored_entries(X):
            deviations = (values - mean[columns]) / scale
            total += float(np.square(deviations).sum())
            deviation_sums += np.bincount(columns, weights=deviations, minlength=X.shape[1])
            stored_per_column += np.bincount(columns, minlength=X.shape[1])
        implicit_zeros = X.shape[0] - stored_per_column
        total += float(implicit_zeros @ np.square(mean / scale))
        deviation_sums -= implicit_zeros * mean / scale
    else:
        chunk_rows = rows_per_chunk(X.shape[1])
        for start in range(0, X.shape[0], chunk_rows):
            deviations = (X[start : start + chunk_rows] - mean) / scale
            total += float(np.square(deviations).sum())
            deviation_sums += deviations.sum(axis=0)
    # The mean in float64 is off by up to half a unit in the last place of the data,
    # which adds n times its square to the sum: the corrected two-pass algorithm (Chan,
    # Golub and LeVeque, 1983) takes it off, 5e-10 of the FVU of data offset by 1e12.
    return max(total - float(np.square(deviation_sums).sum()) / X.shape[0], 0.0)


def _stored_entries(X):
    """Yield the column indices and float64 values of the entries a scipy.sparse ``X``
    stores, about a million at a time, each position once."""
    X = sp.csr_array(X)
    if not X.has_canonical_format:  # duplicate entries add up: merge them, on a copy
        X = X.copy()
        X.sum_duplicates()
    for start in range(0, X.nnz, CHUNK_VALUES):
        stop = start + CHUNK_VALUES
        yield X.indices[start:stop], X.data[start:stop].astype(np.float64)


def map_rows(fn, X, *, device, chunk_rows=INFERENCE_CHUNK_ROWS):
    """Apply a row-wise torch function to ``X`` chunk by chunk; return a numpy array.

    ``fn`` maps a ``[chunk_rows, n_features]`` tensor to a tensor whose first axis is
    rows. ``X`` is a numpy array or a scipy.sparse matrix (densified chunk by chunk).
    Peak extra memory is one chunk's input and output, whatever ``len(X)``.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae._nn.batches import map_rows
    >>> map_rows(lambda x: x.sum(dim=1), np.ones((3, 2)), device="cpu")
    array([2., 2., 2.])
    """
    out = None
    for start, stop, result in map_chunks(fn, X, device=device, chunk_rows=chunk_rows):
        result = result[: stop - start].cpu().numpy()
        if out is None:
            out = np.empty((X.shape[0], *result.shape[1:]), dtype=result.dtype)
        out[start:stop] = result
    return out


def map_chunks(fn, X, *, device, chunk_rows=INFERENCE_CHUNK_ROWS):
    """Yield ``(start, stop, fn(chunk))`` for the chunks of rows ``start:stop`` of ``X``.

    Every chunk is zero-padded to ``chunk_rows`` rows before ``fn`` sees it (see
    :data:`INFERENCE_CHUNK_ROWS`): the first ``stop - start`` rows of the result are
    real, the others padding.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae._nn.batches import map_chunks
    >>> [(start, stop, y.shape) for start, stop, y in
    ...  map_chunks(lambda x: 2 * x, np.ones((5, 2)), device="cpu", chunk_rows=4)]
    [(0, 4, torch.Size([4, 2])), (4, 5, torch.Size([4, 2]))]
    """
    staging = np.zeros((chunk_rows, X.shape[1]), dtype=X.dtype.newbyteorder("="))
    for start in range(0, X.shape[0], chunk_rows):
        stop = min(start + chunk_rows, X.shape[0])
        staging[: stop - start] = as_dense(X[start:stop])
        staging[stop - start :] = 0
        yield start, stop, fn(to_tensor(staging, device))
