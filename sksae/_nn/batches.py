"""From arrays to torch batches, and row-wise maps over arrays in bounded memory.

Training data is a :class:`DenseRows` (one tensor on the device; batches are views or
one gather), a :class:`MappedRows` (a memory-mapped array, read one batch at a time) or a
:class:`SparseRows` (a scipy CSR matrix, densified one batch at a time);
:func:`training_rows` picks. Both give ``len``, ``take(index)`` for a slice or a
tensor of row indices, and the statistics the loop reports against.
"""

import numpy as np
import scipy.sparse as sp
import torch

#: Rows per inference chunk. Every chunk is zero-padded to exactly this many rows: a
#: lone row would take a different BLAS path (gemv) than a block and could differ in the
#: last bits, so fixed-size chunks make ``f(X)[i]`` bitwise equal to ``f(X[i:i+1])``.
INFERENCE_CHUNK_ROWS = 256


def to_tensor(X, device):
    """A numpy array as a contiguous torch tensor on ``device``.

    No copy on the CPU when ``X`` is C-contiguous and writeable; a read-only array (a
    memory map, say) is copied, as torch tensors cannot be read-only.
    """
    X = np.ascontiguousarray(X)
    if not X.flags.writeable:
        X = X.copy()
    return torch.from_numpy(X).to(device)


def as_dense(X):
    """``X`` as a numpy array, densifying a scipy.sparse matrix."""
    return X.toarray() if sp.issparse(X) else X


def training_rows(X, device):
    """The rows of a numpy array, a memory map or a scipy.sparse matrix, for training."""
    if sp.issparse(X):
        return SparseRows(X, device)
    if isinstance(X, np.memmap) or not X.flags.writeable:
        return MappedRows(X, device)
    return DenseRows(to_tensor(X, device))


class DenseRows:
    """Rows of one dense tensor: batches are views (slices) or one gather (indices).

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.batches import DenseRows
    >>> rows = DenseRows(torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    >>> len(rows), rows.take(torch.tensor([1])).tolist(), rows.variance()
    (2, [[2.0, 0.0]], 2.0)
    """

    def __init__(self, tensor):
        self.tensor = tensor

    def __len__(self):
        return self.tensor.shape[0]

    @property
    def device(self):
        return self.tensor.device

    def take(self, index):
        return self.tensor[index]

    def mean(self):
        return self.tensor.mean(dim=0)

    def variance(self):
        """Mean squared distance of a row to the mean row (the denominator of FVU)."""
        return (self.tensor - self.mean()).square().sum(dim=1).mean().item()


class MappedRows:
    """Rows of an array left where it is (a memory map, say), read one batch at a time.

    Only the rows of a batch are copied into memory, so a file larger than memory
    trains in bounded memory; shuffled batches read scattered rows, which a disk serves
    more slowly than a contiguous file.

    Examples
    --------
    >>> import numpy as np
    >>> from sksae._nn.batches import MappedRows
    >>> rows = MappedRows(np.array([[0.0, 2.0], [2.0, 0.0]]), device="cpu")
    >>> rows.take(slice(1, 2)).tolist(), rows.variance()
    ([[2.0, 0.0]], 2.0)
    """

    def __init__(self, X, device):
        self.X = X
        self.device = torch.device(device)

    def __len__(self):
        return self.X.shape[0]

    def take(self, index):
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(np.array(self.X[index])).to(self.device)

    def mean(self):
        # numpy reduces a memory map block by block, without a copy of it.
        mean = np.asarray(self.X.mean(axis=0, dtype=np.float64))
        return torch.from_numpy(mean).to(self.device, _torch_dtype(self.X.dtype))

    def variance(self):
        return squared_deviation_sum(self.X) / len(self)


class SparseRows:
    """Rows of a scipy.sparse matrix, densified only one batch at a time.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from sksae._nn.batches import SparseRows
    >>> rows = SparseRows(sp.csr_array([[0.0, 2.0], [2.0, 0.0]]), device="cpu")
    >>> rows.take(slice(0, 1)).tolist(), rows.variance()
    ([[0.0, 2.0]], 2.0)
    """

    def __init__(self, X, device):
        self.X = sp.csr_array(X)
        self.device = torch.device(device)

    def __len__(self):
        return self.X.shape[0]

    def take(self, index):
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(self.X[index].toarray()).to(self.device)

    def mean(self):
        return torch.from_numpy(np.asarray(self.X.mean(axis=0)).ravel()).to(self.device)

    def variance(self):
        # E||x||^2 - ||E x||^2 in float64: no dense copy of the data.
        squared_norms = self.X.multiply(self.X).sum(dtype=np.float64) / self.X.shape[0]
        mean = np.asarray(self.X.mean(axis=0, dtype=np.float64)).ravel()
        return float(squared_norms - mean @ mean)


def squared_deviation_sum(X, chunk_rows=4096):
    """``sum_i ||x_i - mean(X)||^2`` in float64 for a dense or sparse ``X``, by chunks."""
    mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
    return sum(
        float(np.square(as_dense(X[start : start + chunk_rows]) - mean).sum())
        for start in range(0, X.shape[0], chunk_rows)
    )


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
    n_samples = X.shape[0]
    out = None
    staging = np.zeros((chunk_rows, X.shape[1]), dtype=X.dtype)
    for start in range(0, n_samples, chunk_rows):
        stop = min(start + chunk_rows, n_samples)
        staging[: stop - start] = as_dense(X[start:stop])
        staging[stop - start :] = 0
        result = fn(to_tensor(staging, device))[: stop - start].cpu().numpy()
        if out is None:
            out = np.empty((n_samples, *result.shape[1:]), dtype=result.dtype)
        out[start:stop] = result
    return out


def _torch_dtype(numpy_dtype):
    return torch.from_numpy(np.empty(0, dtype=numpy_dtype)).dtype
