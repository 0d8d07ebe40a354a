"""From arrays to torch batches, and row-wise maps over arrays in bounded memory."""

import numpy as np
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


def map_rows(fn, X, *, device, chunk_rows=INFERENCE_CHUNK_ROWS):
    """Apply a row-wise torch function to ``X`` chunk by chunk; return a numpy array.

    ``fn`` maps a ``[chunk_rows, n_features]`` tensor to a tensor whose first axis is
    rows. Peak extra memory is one chunk's input and output, whatever ``len(X)``.

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
        staging[: stop - start] = X[start:stop]
        staging[stop - start :] = 0
        result = fn(to_tensor(staging, device))[: stop - start].cpu().numpy()
        if out is None:
            out = np.empty((n_samples, *result.shape[1:]), dtype=result.dtype)
        out[start:stop] = result
    return out
