"""Sparsifiers: the maps from encoder pre-activations to a sparse code.

Each SAE variant is one small class here. A sparsifier decides

* how the code is computed while training (:meth:`Sparsifier.forward`) and at inference
  (:meth:`Sparsifier.encode`, row-independent by contract),
* what sparsity penalty enters the loss (:meth:`Sparsifier.penalty`, ``None`` for none),
* how the decoder is constrained (``unit_norm_decoder``) and initialised
  (``decoder_init_norm``).

A code is a :class:`Code`: either a dense ``[batch, n_latents]`` tensor, or the ``k``
values and latent indices of each row, which lets the decoder touch only the chosen rows.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class Code(NamedTuple):
    """A batch of sparse codes.

    ``indices is None``: ``values`` is the dense ``[batch, n_latents]`` code.
    Otherwise row ``b`` of the code holds ``values[b, j]`` at latent ``indices[b, j]`` and
    zeros elsewhere (``values`` and ``indices`` are ``[batch, k]``).
    """

    values: torch.Tensor
    indices: torch.Tensor | None = None
    #: The sparsifier's penalty (mean over rows), when computing it with the code saves
    #: work (JumpReLU's L0 shares its comparisons and kernel window with the code).
    penalty: torch.Tensor | None = None
    #: How many rows each latent fired on, when the sparsifier counted them as it made
    #: the code (the dense training codes: counting then costs less than comparing the
    #: code again).
    fired: torch.Tensor | None = None

    def to_dense(self, n_latents):
        """Return the code as a dense ``[batch, n_latents]`` tensor."""
        if self.indices is None:
            return self.values
        dense = self.values.new_zeros(self.values.shape[0], n_latents)
        return dense.scatter_(1, self.indices, self.values)


class Sparsifier(torch.nn.Module):
    """Base class: maps pre-activations ``[batch, n_latents]`` to a :class:`Code`."""

    #: Keep decoder rows at unit norm (renormalise after each step, project the gradient).
    unit_norm_decoder = False
    #: Norm of the decoder rows at initialisation.
    decoder_init_norm = 1.0
    #: Whether the tied initial encoder is scaled so that the codes reconstruct the data
    #: best (:meth:`~sksae._nn.module.SparseAutoencoder.scale_encoder_`).
    scaled_initial_encoder = True
    #: Whether :meth:`penalty` contributes to the loss (weighted by ``alpha``).
    penalised = False
    #: Whether the AuxK loss applies. Only a hard sparsity constraint needs it: a penalty
    #: keeps gradients flowing to every latent, a TopK selection does not.
    needs_auxk = False
    #: Whether a dense training code may stay in the pre-activations' low precision
    #: (autocast); otherwise they are cast up to the model's dtype first.
    low_precision_code = False
    #: The number of optimiser steps taken before the training pass under way, which the
    #: trainer sets (and a resumed trainer continues) for sparsifiers that vary by step.
    training_step = 0

    def encode(self, pre):
        """Inference code; must treat every row independently of the others."""
        return self(pre)

    def penalty(self, code, decoder_norms):
        """Per-batch sparsity penalty (mean over rows), or ``None`` for a hard constraint."""
        return None

    def trains_sparse(self, n_latents):
        """Whether training codes are a few chosen latents per row (:meth:`select`)
        rather than dense ``[batch, n_latents]`` codes (:meth:`forward`)."""
        return False

    def select(self, pre):
        """Latents each row keeps, ``[batch, k]``, when :meth:`trains_sparse`.

        The training code is then ``activate(pre at those latents)``, and the model
        back-propagates through the chosen entries alone. ``pre`` is detached.
        """
        raise NotImplementedError

    def constrain_(self):
        """Project the sparsifier's own parameters back to their domain after a step."""

    def scale_latents_(self, factors):
        """Follow pre-activations multiplied by ``factors`` (positive, one per latent) so
        that the code is multiplied by them too, and return True; or change nothing and
        return False. Only sparsifiers with parameters on the pre-activations' scale need
        it; TopK's selection among latents cannot follow uneven factors, and needs
        nothing to follow an even one."""
        return False


class ReLU(Sparsifier):
    """``h = ReLU(pre)`` with an L1 penalty weighted by the decoder row norms.

    This is the April-2024 Anthropic recipe: the decoder is left unconstrained and the
    penalty ``sum_i h_i ||W_dec[i]||`` stops the model from shrinking codes while growing
    decoder rows, which a plain L1 on ``h`` would reward.
    """

    decoder_init_norm = 0.1
    # The L1 penalty grows with the codes: at the default alpha, codes scaled up to
    # reconstruct the data were twice as dense after 10 epochs (L0 19.8 against 9.0, on
    # 16 features) and reconstructed worse (FVU 0.24 against 0.22). The small initial
    # decoder keeps them small instead.
    scaled_initial_encoder = False
    penalised = True
    low_precision_code = True

    def forward(self, pre):
        """The code, written over ``pre``."""
        values, fired = _CodeOverPre.apply(pre, 0.0)
        return Code(values, fired=fired)

    def penalty(self, code, decoder_norms):
        # Column sums first: one pass over the code. A bfloat16 code (autocast) is summed
        # in bfloat16, which accumulates in float32 and rounds the sums alone. A sum
        # into float32 would, on the CPU, copy the whole code to float32 first, and on
        # any device its backward pass would cast the broadcast gradient into a
        # [batch, n_latents] tensor, where this one stays a broadcast.
        column_sums = code.values.sum(dim=0).to(decoder_norms.dtype)
        return column_sums @ decoder_norms / code.values.shape[0]


class TopK(Sparsifier):
    """Keep the ``k`` largest entries of ``ReLU(pre)`` in each row (Gao et al., 2024)."""

    unit_norm_decoder = True
    needs_auxk = True

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, pre):
        values, indices = pre.topk(self.k, dim=1, sorted=False)
        return _compact(Code(self.activate(values), indices), pre.shape[1])

    def trains_sparse(self, n_latents):
        return self.k <= SPARSE_CODE_MAX_DENSITY * n_latents

    def select(self, pre):
        return pre.topk(self.k, dim=1, sorted=False).indices

    def activate(self, selected):
        return F.relu(selected)

    def extra_repr(self):
        return f"k={self.k}"


class BatchTopK(TopK):
    """Keep the ``batch * k`` largest entries of ``ReLU(pre)`` over the whole batch.

    Training allots the batch's ``batch * k`` activations to whichever rows need them
    (Bussmann et al., 2024). Inference must not depend on the other rows, so it is a
    JumpReLU with one threshold: a moving average, in float64, of the smallest
    activation each training batch kept, which forgets the first batches within a short
    fit (see :attr:`threshold_averaging_power`).

    Parameters
    ----------
    k : int
        Mean number of active latents per row.
    threshold : tensor or None
        A trained inference threshold (scalar), or ``None`` to learn it.
    """

    #: Weight of the newest batch in the moving average of the threshold, at least.
    threshold_momentum = 0.01
    #: At step ``t`` (from 0) the newest batch weighs ``(c + 1) / (t + c + 1)`` for this
    #: ``c``, if more than :attr:`threshold_momentum`: polynomial-decay averaging
    #: (Shamir and Zhang, 2013), in which the batch of step ``i`` weighs in proportion
    #: to about ``i^c``. An untrained model keeps larger activations than a trained
    #: one: a plain moving average from the first step still gave the first batch a
    #: fifth of the weight after 160 steps, and transform kept about half as many
    #: latents as ``k``. The first batch sets the threshold outright; from step 396 on,
    #: the average is the plain one. A model imported from a research checkpoint starts
    #: at step 0 too: training re-estimates its threshold for the weights as they are.
    threshold_averaging_power = 3
    #: A batch's selection first runs over the values at or above this fraction of the
    #: previous batch's cutoff: consecutive cutoffs differ by a few percent (measured:
    #: never by 20% at 256 rows, 5% of the time at 64).
    previous_cutoff_fraction = 0.75
    #: Otherwise each row's own largest ``candidates_per_k * k`` activations are the
    #: candidates for the batch's selection (all of them when a row could hold more).
    candidates_per_k = 4

    #: Under autocast the selection reads bfloat16 values as they are: cast up, they
    #: would be the same values, ties included.
    low_precision_code = True

    def __init__(self, k, threshold=None):
        super().__init__(k)
        if threshold is None:
            threshold = torch.tensor(math.nan, dtype=torch.float64)
        self.register_buffer("threshold", threshold.to(torch.float64))
        # Training state, not part of the model: NaN until a batch has been selected.
        self.register_buffer("cutoff", torch.tensor(math.nan), persistent=False)

    def trains_sparse(self, n_latents):
        # Rows keep different numbers of latents: the code stays dense.
        return False

    def forward(self, pre):
        """The training code, written over ``pre``."""
        kept = self._batch_top(pre.detach())
        self._track_threshold(kept)
        self.cutoff = kept.min()
        # Every activation at or above the smallest kept one: the batch's top ``batch * k``
        # (ties aside), ReLU'd too as the cutoff is never negative: those strictly above
        # the largest float below the cutoff, a bound that stays on the device.
        below = torch.nextafter(self.cutoff, self.cutoff.new_tensor(-math.inf))
        values, fired = _CodeOverPre.apply(pre, below.clamp_min(0.0))
        return Code(values, fired=fired)

    def _batch_top(self, pre):
        """The ``batch * k`` largest values of ``ReLU(pre)`` over the whole batch.

        A top-k over all ``batch * n_latents`` values is slow, so it runs over the values
        at or above a lower bound of the batch's cutoff alone: a fraction of the previous
        batch's cutoff where at least ``batch * k`` values reach it (gathered, then
        counted: one host sync), else the smallest of the top over each row's own largest
        ``candidates_per_k * k`` values, a subset. Only when that bound is 0 (few
        positive candidates) does it run over every value.
        """
        n_rows, n_latents = pre.shape
        budget = self.k * n_rows
        bound = self.previous_cutoff_fraction * self.cutoff.to(pre.dtype)
        above = pre[pre >= bound]  # none for the first batch, whose cutoff is NaN
        if len(above) >= budget:
            return above.topk(budget, sorted=False).values
        per_row = min(n_latents, self.candidates_per_k * self.k)
        candidates = F.relu(pre.topk(per_row, dim=1, sorted=False).values)
        kept = candidates.flatten().topk(budget, sorted=False).values
        if per_row == n_latents:
            return kept
        bound = kept.min()
        above = pre[pre >= bound] if bound.item() > 0 else F.relu(pre).flatten()
        return above.topk(budget, sorted=False).values

    @torch.no_grad()
    def _track_threshold(self, kept):
        # On the device, without a host sync: a batch that kept no positive activation
        # leaves the threshold as it was, and the first one that did sets it outright.
        smallest = torch.where(kept > 0, kept, math.inf).min().to(torch.float64)
        power = self.threshold_averaging_power
        weight = max(self.threshold_momentum, (power + 1) / (self.training_step + power + 1))
        average = torch.lerp(self.threshold, smallest, weight)
        updated = torch.where(self.threshold.isnan(), smallest, average)
        self.threshold.copy_(torch.where(smallest.isfinite(), updated, self.threshold))

    def encode(self, pre):
        return _jump_relu(pre, self.threshold)


#: The Weyl sequence ``n * phi mod 1`` spreads over [0, 1) as evenly as any: JumpReLU's
#: threshold offsets under autocast.
_GOLDEN_RATIO = (1 + math.sqrt(5)) / 2


class JumpReLU(Sparsifier):
    """``h = pre * H(pre - theta)`` with a learned threshold per latent and an L0 penalty.

    Rajamanoharan et al. (2024). The step function has no useful gradient, so the
    thresholds learn through straight-through estimators with a rectangle kernel of width
    ``bandwidth``: ``dh/dtheta = -(theta / eps) K((pre - theta) / eps)`` and
    ``dL0/dtheta = -(1 / eps) K((pre - theta) / eps)``, and the L0 penalty is the Step of
    the pre-activations, not of the code. The thresholds are the parameters themselves,
    not ``exp(log theta)``, whose updates Adam shrinks to nothing for small thresholds.

    Parameters
    ----------
    n_latents : int
    bandwidth : float
        Kernel width ``eps``; 0.001 in the paper, for inputs scaled to
        ``E||x|| = sqrt(n_features)``.
    threshold : tensor or None
        Trained thresholds, or ``None`` to start every one at ``bandwidth``.

    Notes
    -----
    Low-precision pre-activations (autocast) are compared with the thresholds exactly,
    and the code stays in their dtype. But bfloat16 values are 1/256 to 1/128 of their
    size apart, which near a threshold can exceed the kernel's width: the window then
    holds one representable value, either above the threshold or below it, where exact
    values would fill both sides. A threshold then settles just above a value whose pull
    down (the reconstruction's) outweighs the L0's push up, lower than the exact values'
    balance: an L0 of 19.9 where float32 gives 11.7, in the test
    ``test_jumprelu_thresholds_learn_alike_under_bfloat16_autocast``. Each training step
    therefore offsets the thresholds by a different fraction of that spacing (a Weyl
    sequence, equidistributed), so that over the steps the window sees both sides as it
    would exact values: an L0 of 11.6 there.
    """

    unit_norm_decoder = True
    penalised = True
    low_precision_code = True

    def __init__(self, n_latents, bandwidth, threshold=None):
        super().__init__()
        self.bandwidth = bandwidth
        if threshold is None:
            threshold = torch.full((n_latents,), bandwidth, dtype=torch.float64)
        if (threshold < 0).any():
            # The training code's backward pass relies on it (see _JumpReLUFunction).
            raise ValueError(
                f"JumpReLU thresholds must be non-negative; got {threshold.min().item():g}."
            )
        # float64 whatever the model's dtype: small threshold updates survive.
        self.threshold = torch.nn.Parameter(threshold.to(torch.float64))

    def forward(self, pre):
        """The training code and its L0 penalty; the code is written over ``pre``."""
        # The model's dtype: float32 under autocast, never lower.
        threshold = self.threshold.to(torch.promote_types(pre.dtype, torch.float32))
        if torch.finfo(pre.dtype).eps > torch.finfo(threshold.dtype).eps:
            threshold = threshold + self._dither(threshold, pre.dtype)
        values, l0, fired = _JumpReLUFunction.apply(pre, threshold, self.bandwidth)
        return Code(values, penalty=l0, fired=fired)

    def _dither(self, threshold, dtype):
        """This step's offsets of the thresholds: the same fraction, in [-1/2, 1/2), of
        the spacing of ``dtype``'s values around each (see Notes)."""
        fraction = math.fmod(self.training_step * _GOLDEN_RATIO, 1.0) - 0.5
        mantissa, exponent = torch.frexp(threshold.detach())
        # Values in [2^(e-1), 2^e) lie eps * 2^(e-1) apart; a zero threshold stays put.
        spacing = torch.ldexp(torch.full_like(mantissa, torch.finfo(dtype).eps / 2), exponent)
        return fraction * torch.where(mantissa != 0, spacing, 0)

    def encode(self, pre):
        return _jump_relu(pre, self.threshold)

    def penalty(self, code, decoder_norms):
        return code.penalty

    @torch.no_grad()
    def constrain_(self):
        # A negative threshold would let negative pre-activations through.
        self.threshold.clamp_(min=0)

    @torch.no_grad()
    def scale_latents_(self, factors):
        self.threshold.mul_(factors.to(self.threshold.dtype))
        return True

    def extra_repr(self):
        return f"bandwidth={self.bandwidth}"


class _JumpReLUFunction(torch.autograd.Function):
    """The JumpReLU code ``pre * H(pre - threshold)``, written over ``pre``, and its L0
    penalty, the mean over rows of ``sum_i H(pre_i - threshold_i)``, with the paper's
    straight-through gradients.

    One function for both: they share the comparison with the thresholds and the
    rectangle kernel's window, each a pass over ``[batch, n_latents]``. The code passes
    ``H(pre - threshold)`` to the pre-activations and ``-(threshold / eps) K`` to the
    thresholds; the L0 term passes ``-(1 / eps) K`` (averaged over rows) to the
    thresholds and nothing to the pre-activations.

    The code overwrites ``pre``, as :class:`_CodeOverPre`'s does: a fresh tensor
    the size of the code is freshly mapped memory on the CPU, whose page faults cost more
    than the masking itself (about 15 against 3.5 ms at 4096 x 4096 in float32, see
    :func:`_zero_at_or_below`, which also counts the firings it keeps). The kernel's
    window is therefore located here, while ``pre`` still holds the values below the
    thresholds, and the backward pass reads the code alone: the thresholds are
    non-negative (:class:`JumpReLU` refuses others, and :meth:`JumpReLU.constrain_`
    keeps them so), so the active entries are exactly the positive ones, whose gradient
    :func:`_grad_over_code` passes.
    """

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        # Compared in pre's dtype (a mixed comparison would copy pre to the thresholds'
        # on the CPU), with bounds rounded so that each comparison is exact.
        bound = _rounded_down(threshold, pre.dtype)
        ctx.bandwidth = bandwidth
        ctx.n_rows = pre.shape[0]
        ctx.window = None
        if ctx.needs_input_grad[1]:
            # The kernel's window |pre - threshold| < eps / 2 by two comparisons, without
            # a float temporary the size of the code.
            low = _rounded_down(threshold.double() - bandwidth / 2, pre.dtype)
            high = _rounded_up(threshold.double() + bandwidth / 2, pre.dtype)
            ctx.window = _Entries.between(pre, low, high)
        # After the window, which reads the values below the thresholds.
        fired = pre.new_zeros(pre.shape[1], dtype=torch.float32)
        _zero_at_or_below(pre, bound, counts=fired)
        ctx.mark_dirty(pre)
        ctx.mark_non_differentiable(fired)
        ctx.save_for_backward(pre, threshold)
        # An unused output (the penalty of an unpenalised fit) gets None, not zeros.
        ctx.set_materialize_grads(False)
        l0 = fired.sum(dtype=torch.float64).to(threshold.dtype) / ctx.n_rows
        return pre, l0, fired

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values, grad_l0, grad_fired):
        code, threshold = ctx.saved_tensors
        grad_pre = grad_threshold = None
        if grad_values is not None and ctx.needs_input_grad[0]:
            grad_pre = _grad_over_code(grad_values, code)
        if ctx.window is not None:
            bandwidth = ctx.bandwidth
            grad_threshold = torch.zeros_like(threshold)
            if grad_values is not None:
                in_window = ctx.window.column_sums(grad_values, threshold.dtype)
                grad_threshold -= (threshold / bandwidth) * in_window
            if grad_l0 is not None:
                n_in_window = ctx.window.counts.to(threshold.dtype)
                grad_threshold -= grad_l0 / (ctx.n_rows * bandwidth) * n_in_window
        return grad_pre, grad_threshold, None


class _CodeOverPre(torch.autograd.Function):
    """The code ``pre * H(pre - threshold)`` for a non-negative ``threshold`` (a number,
    or a 0-dim tensor of ``pre``'s dtype), written over ``pre``, with the number of rows
    each latent fired on (counted as the code is made, :func:`_zero_at_or_below`), and
    its gradient written over the code (:func:`_grad_over_code`).

    ReLU's code and BatchTopK's training code. Each tensor the size of the code that a
    step makes afresh is freshly mapped memory on the CPU, whose page faults took about
    20 ms a step at 4096 x 4096 in float32, several times the masking itself.
    """

    @staticmethod
    def forward(ctx, pre, threshold):
        fired = pre.new_zeros(pre.shape[1], dtype=torch.float32)
        bound = torch.as_tensor(threshold, dtype=pre.dtype, device=pre.device)
        _zero_at_or_below(pre, bound, counts=fired)
        ctx.mark_dirty(pre)
        ctx.mark_non_differentiable(fired)
        ctx.save_for_backward(pre)
        return pre, fired

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_fired):
        (code,) = ctx.saved_tensors
        return _grad_over_code(grad, code), None


def _grad_over_code(grad, code):
    """The gradient of a code's pre-activations, ``grad`` where ``code > 0`` and zero
    elsewhere, written over ``code``.

    The code is then lost, which is safe: the gradient of the code has been computed
    (the decoder's backward pass, the last to read it, has run), and autograd's version
    check stops any later node that saved it from reading the overwritten values.
    """
    return torch.ops.aten.threshold_backward.grad_input(grad, code, 0, grad_input=code)


def _jump_relu(pre, threshold):
    """``pre * H(pre - threshold)``, the row-independent code of JumpReLU and BatchTopK,
    written over ``pre``, compared exactly with the float64 thresholds.

    JumpReLU's training compares with its thresholds in the model's dtype: in a float32
    model, rounded to nearest. The two differ only at a pre-activation equal to a
    threshold rounded up, which is above the threshold and kept here.
    """
    return Code(_zero_at_or_below(pre, _rounded_down(threshold, pre.dtype)))


#: Rows per block of the masks that :func:`_row_blocks` gives on the CPU (a few MB).
_MASK_BLOCK_ROWS = 256


def _zero_at_or_below(pre, bounds, counts=None):
    """Zero, in place, the entries of ``pre`` at most their column's bound, and add to
    ``counts``, if given, the number of entries of each column kept.

    On the CPU, ``torch.where`` with a boolean mask is a scalar loop: 34 ms at
    4096 x 4096, in float32 as in bfloat16. A comparison into a mask in ``pre``'s own
    dtype, then ReLU's backward kernel, which keeps ``pre`` where that mask is positive,
    take 3.5 ms for the same result, bit for bit; a block of rows at a time, so that the
    mask stays a few MB. On an accelerator ``torch.where`` is one vectorised pass.
    """
    if pre.device.type != "cpu":
        above = pre > bounds
        if counts is not None:
            counts += count_true(above)
        return torch.where(above, pre, pre.new_zeros(()), out=pre)
    for _, rows, (above,) in _row_blocks(pre):
        torch.gt(rows, bounds, out=above)
        if counts is not None:
            counts += above.sum(dim=0, dtype=counts.dtype)
        torch.ops.aten.threshold_backward.grad_input(rows, above, 0, grad_input=rows)
    return pre


def _row_blocks(values, n_masks=1):
    """Yield ``(first row, block, masks)`` for the blocks of :data:`_MASK_BLOCK_ROWS` rows
    of ``values``: ``n_masks`` tensors shaped like the block, in its dtype, for the masks
    of a comparison, the same memory from one block to the next."""
    shape = (min(len(values), _MASK_BLOCK_ROWS), values.shape[1])
    scratch = [values.new_empty(shape) for _ in range(n_masks)]
    for start in range(0, len(values), _MASK_BLOCK_ROWS):
        block = values[start : start + _MASK_BLOCK_ROWS]
        yield start, block, [mask[: len(block)] for mask in scratch]


def _rounded_down(values, dtype):
    """The largest number of ``dtype`` at most each of ``values``: for any ``p`` of
    ``dtype``, ``p > _rounded_down(v, dtype)`` exactly when ``p > v``.

    Rounded to nearest instead, a bound could move by half a unit in the last place of
    ``dtype``, a sizeable part of a narrow window around a large threshold.
    """
    rounded = values.to(dtype)
    below = torch.nextafter(rounded, rounded.new_tensor(-math.inf))
    return torch.where(rounded > values, below, rounded)


def _rounded_up(values, dtype):
    """The smallest number of ``dtype`` at least each of ``values``: for any ``p`` of
    ``dtype``, ``p < _rounded_up(v, dtype)`` exactly when ``p < v``."""
    return -_rounded_down(-values, dtype)


class _Entries(NamedTuple):
    """A few entries of a 2-D tensor (those strictly between two bounds per column, see
    :meth:`between`), and their number in each column.

    On the CPU they are kept as indices (``rows``, ``columns``), from which sums gather
    the few entries: a masked copy of the values would be a fresh tensor the size of the
    mask, page-faulted in at every step. On an accelerator finding them would make the
    host wait, and the boolean ``mask`` itself is kept.
    """

    counts: torch.Tensor
    mask: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    columns: torch.Tensor | None = None

    @classmethod
    def between(cls, values, low, high):
        """The entries of ``values`` strictly between ``low`` and ``high`` (one bound per
        column, in the values' dtype).

        On the CPU, comparisons into boolean masks over the whole tensor are slow: a
        block of rows at a time, through masks in the values' own dtype, takes 12
        instead of 32 ms at 4096 x 4096 in float32 (8 instead of 25 in bfloat16).
        """
        if values.device.type != "cpu":
            mask = values > low
            mask &= values < high
            return cls(count_true(mask), mask=mask)
        no_entries = torch.empty(0, dtype=torch.int64, device=values.device)
        row_parts, column_parts = [no_entries], [no_entries]
        for start, block, (above_low, below_high) in _row_blocks(values, n_masks=2):
            torch.gt(block, low, out=above_low)
            inside = above_low.mul_(torch.lt(block, high, out=below_high))
            rows, columns = inside.nonzero(as_tuple=True)
            row_parts.append(rows + start)
            column_parts.append(columns)
        rows, columns = torch.cat(row_parts), torch.cat(column_parts)
        counts = torch.bincount(columns, minlength=values.shape[1])
        return cls(counts, rows=rows, columns=columns)

    def column_sums(self, values, dtype):
        """Sums in ``dtype`` of ``values`` (shaped like the mask) over the entries of
        each column."""
        if self.mask is not None:
            return torch.where(self.mask, values, 0).sum(dim=0, dtype=dtype)
        gathered = values[self.rows, self.columns].to(dtype)
        return gathered.new_zeros(len(self.counts)).index_add_(0, self.columns, gathered)


def count_true(mask):
    """Number of true entries in each column of a 2-D boolean tensor (int32).

    Summing in any wider type first copies the whole mask to it, which costs more than
    the sum. Bytes summed in uint8 cannot exceed 255 within a block of 255 rows, so each
    block is summed in uint8 and only the block sums are widened.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.sparsifiers import count_true
    >>> count_true(torch.arange(600)[:, None] < torch.tensor([0, 300, 600])).tolist()
    [0, 300, 600]
    """
    as_bytes = mask.view(torch.uint8)
    n_rows, n_columns = as_bytes.shape
    n_blocks = n_rows // 255
    blocks = as_bytes[: n_blocks * 255].reshape(n_blocks, 255, n_columns)
    block_sums = blocks.sum(dim=1, dtype=torch.uint8)
    rest = as_bytes[n_blocks * 255 :].sum(dim=0, dtype=torch.uint8)
    return block_sums.sum(dim=0, dtype=torch.int32) + rest


#: Codes with at most this fraction of latents active are decoded, and trained, through
#: the chosen rows alone; denser ones as dense matmuls, which are then faster. Measured on
#: the CPU (decode forward and backward, 4096 rows of 512 features): sparse 144 ms vs dense
#: 308 at k=128 of 4096 latents; on 512 rows of 64, 1.05 vs 1.45 ms at k=5 of 512 but 1.2
#: vs 0.53 at k=8 of 256, where the fixed cost of the sparse products dominates.
SPARSE_CODE_MAX_DENSITY = 1 / 32


def _compact(code, n_latents):
    """``code`` as indices and values if that is the faster form to decode, else dense."""
    if code.values.shape[1] <= SPARSE_CODE_MAX_DENSITY * n_latents:
        return code
    return Code(code.to_dense(n_latents))


#: The sparsifier class of each ``activation`` name of the estimator.
SPARSIFIERS = {"relu": ReLU, "topk": TopK, "batchtopk": BatchTopK, "jumprelu": JumpReLU}
