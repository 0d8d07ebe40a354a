"""Encoder-guided pursuit: sparse codes that reconstruct better than the encoder's own.

An SAE's encoder picks each row's active latents and their values in one matrix
product. That is fast, but not the best code the decoder admits at the same sparsity
(the *amortisation gap*): the linear encoder cannot undo the interference between
overlapping dictionary atoms. Pursuit closes much of the gap at a small cost. The
encoder's largest pre-activations name a short list of candidate atoms per row; a
greedy, non-negative orthogonal matching pursuit picks the row's atoms among them one
at a time, each time refitting the values of the atoms picked so far to the row by
non-negative least squares.

Everything works on the candidates' Gram matrices (``[rows, c, c]`` for ``c``
candidates), so the cost per row is independent of the dictionary size.
"""

import torch

from .sparsifiers import Code

#: Candidate atoms (rows x candidates x features) gathered at a time: rows are pursued in
#: blocks of at most this many values, about 64 MB in float32, whatever the shape.
BLOCK_VALUES = 2**24

#: Coordinate-descent sweeps of each non-negative least-squares refit. Each refit starts
#: close to its answer (from the previous pick's, or from least squares): a few suffice.
NNLS_SWEEPS = 5

#: Ridge, relative to the Gram matrix's mean diagonal, of the least-squares solves that
#: start a refit over all candidates.
RIDGE = 1e-4

#: Least-squares solves that start a refit over all candidates, each dropping the atoms
#: the last one solved below zero. A fixed count keeps the device from waiting on the
#: host; further rounds changed nothing the coordinate descent does not also fix.
LEAST_SQUARES_ROUNDS = 2


def pursue(residual, decoder, candidates, n_nonzero):
    """Non-negative OMP of ``residual`` over the ``candidates`` rows of ``decoder``.

    Parameters
    ----------
    residual : tensor of shape (rows, n_features)
        What to reconstruct: the input minus the decoder bias.
    decoder : tensor of shape (n_latents, n_features)
        The dictionary atoms, as rows.
    candidates : int tensor of shape (rows, c)
        The atoms each row may use (for example its ``c`` largest pre-activations).
    n_nonzero : int
        Atoms picked per row, at most ``c``.

    Returns
    -------
    Code
        ``values`` and ``indices`` of shape ``(rows, c)``; values of atoms not picked,
        or refitted to zero, are 0.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.pursuit import pursue
    >>> atoms = torch.eye(4)
    >>> x = torch.tensor([[3.0, 0.0, 2.0, 0.0]])
    >>> code = pursue(x, atoms, torch.tensor([[0, 1, 2, 3]]), n_nonzero=2)
    >>> code.to_dense(4)
    tensor([[3., 0., 2., 0.]])
    """
    n_candidates, n_features = candidates.shape[1], decoder.shape[1]
    block = max(1, BLOCK_VALUES // (n_candidates * n_features))
    values = [
        _pursue_block(
            residual[start : start + block], decoder, candidates[start : start + block], n_nonzero
        )
        for start in range(0, residual.shape[0], block)
    ]
    return Code(torch.cat(values), candidates)


def _pursue_block(residual, decoder, candidates, n_nonzero):
    atoms = decoder[candidates]  # [rows, c, n_features]
    gram = atoms @ atoms.transpose(1, 2)
    target = (atoms @ residual.unsqueeze(2)).squeeze(2)  # <atom, residual>
    n_rows, n_candidates = target.shape
    if n_nonzero >= n_candidates:
        # Every candidate gets picked, so the greedy order cannot matter: one refit over
        # all of them, from a start that is usually the answer already.
        positions = [(slice(None), column) for column in range(n_candidates)]
        start = _least_squares_on_a_positive_support(gram, target)
        values = _nonnegative_least_squares(gram, target, positions, start)
    else:
        picked = torch.zeros_like(target, dtype=torch.bool)
        values = torch.zeros_like(target)
        rows = torch.arange(n_rows, device=target.device)
        # An atom alone removes (<atom, residual> / ||atom||)^2 of the squared error: by
        # the correlation alone, long atoms would win whatever their fit (the decoder
        # rows of an imported checkpoint need not be unit vectors). An atom whose squared
        # norm underflows to 0 removes nothing the dtype can tell.
        squared_norms = gram.diagonal(dim1=1, dim2=2)
        positions = []
        for _ in range(n_nonzero):
            correlation = target - (gram @ values.unsqueeze(2)).squeeze(2)
            gain = torch.where(squared_norms > 0, correlation / squared_norms.sqrt(), 0.0)
            gain.masked_fill_(picked, -torch.inf)
            positions.append((rows, gain.argmax(dim=1)))
            picked[positions[-1]] = True
            values = _nonnegative_least_squares(gram, target, positions, values)
    return values


def _least_squares_on_a_positive_support(gram, target):
    """A start for the refit: least squares, dropping the atoms whose values go negative.

    Each of ``LEAST_SQUARES_ROUNDS`` rounds solves ``gram @ v = target`` restricted to
    the atoms still in, and drops those solved below zero. Where no value is negative
    this is the non-negative least-squares solution; elsewhere the refit's coordinate
    descent finishes the work. A ridge of ``RIDGE`` times the mean diagonal keeps each
    solve defined when candidate atoms are (nearly) collinear. A row whose start
    reconstructs worse than no atom at all (possible with ill-conditioned candidates)
    starts from 0 instead: the descent then never ends worse than the zero code.
    """
    ridge = RIDGE * gram.diagonal(dim1=1, dim2=2).mean(dim=1)[:, None, None]
    eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    kept = torch.ones_like(target)
    for _ in range(LEAST_SQUARES_ROUNDS):
        # Dropped atoms get an identity row and column and a zero target: value 0.
        restricted = gram * (kept.unsqueeze(1) * kept.unsqueeze(2)) + torch.diag_embed(1 - kept)
        values = torch.linalg.solve_ex(restricted + ridge * eye, target * kept).result
        values = torch.where(values.isfinite(), values, 0.0) * kept
        kept = kept * (values >= 0)
    values = values.clamp_min(0)
    # The objective of the refit, v^T G v / 2 - v^T target, is 0 for the zero code.
    objective = ((gram @ values.unsqueeze(2)).squeeze(2) / 2 - target).mul(values).sum(dim=1)
    return torch.where(objective[:, None] <= 0, values, 0.0)


def _nonnegative_least_squares(gram, target, positions, start):
    """Refit, by coordinate descent, the values at ``positions`` of each row.

    Minimises ``v^T G v / 2 - v^T target`` over ``v >= 0`` supported on the
    ``positions``, the other values of ``start`` being 0. Each position indexes one
    candidate per row: ``(slice(None), j)`` the same one in every row, ``(rows, columns)``
    one per row; a row's positions are distinct. Each update minimises the objective
    exactly along one coordinate, so none increases it, whatever the conditioning of the
    Gram matrix.
    """
    values = start.clone()
    # The minimiser along coordinate j is v_j + (target_j - G_j . v) / G_jj, clipped at 0.
    inverse_curvature = 1 / gram.diagonal(dim1=1, dim2=2).clamp_min(torch.finfo(gram.dtype).tiny)
    scaled_target = target * inverse_curvature
    for _ in range(NNLS_SWEEPS):
        for position in positions:
            correlation = torch.linalg.vecdot(gram[position], values)
            value = values[position] + scaled_target[position]
            value = value.addcmul_(correlation, inverse_curvature[position], value=-1)
            values[position] = value.clamp_min_(0)
    return values
