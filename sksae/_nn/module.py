"""The sparse autoencoder as a compact ``torch.nn.Module``.

``pre = W_enc (x - b_dec) + b_enc``, ``h = sparsifier(pre)``, ``x_hat = W_dec^T h + b_dec``.
Both weight matrices are stored ``[n_latents, n_features]``: decoder rows are the
dictionary atoms. A TopK code of ``k`` latents per row is a sparse matrix ``S``
``[batch, n_latents]``, and every product with it (``S @ W_dec`` forward, ``S^T @ grad``
and the code's gradient backward) touches only the rows it selects.
"""

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .batches import rows_per_chunk
from .pursuit import pursue
from .sparsifiers import Code


class SparseAutoencoder(torch.nn.Module):
    """Encoder, sparsifier and decoder of a sparse autoencoder.

    Parameters
    ----------
    n_features : int
        Input dimension ``d``.
    n_latents : int
        Dictionary size ``n``.
    sparsifier : Sparsifier
        Maps pre-activations to codes; also fixes the decoder's norm handling.
    dtype, device : torch dtype and device of the parameters.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.module import SparseAutoencoder
    >>> from sksae._nn.sparsifiers import TopK
    >>> sae = SparseAutoencoder(8, 32, TopK(k=4))
    >>> sae.reset_parameters(torch.Generator().manual_seed(0), b_dec=torch.zeros(8))
    >>> x_hat, code = sae(torch.randn(5, 8))
    >>> x_hat.shape
    torch.Size([5, 8])
    >>> (code.to_dense(32) != 0).sum(dim=1).tolist()
    [4, 4, 4, 4, 4]
    """

    def __init__(self, n_features, n_latents, sparsifier, *, dtype=torch.float32, device="cpu"):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.sparsifier = sparsifier
        self.W_enc = torch.nn.Parameter(torch.empty(n_latents, n_features, **factory))
        self.b_enc = torch.nn.Parameter(torch.zeros(n_latents, **factory))
        self.W_dec = torch.nn.Parameter(torch.empty(n_latents, n_features, **factory))
        self.b_dec = torch.nn.Parameter(torch.zeros(n_features, **factory))

    @classmethod
    def from_tensors(cls, sparsifier, *, W_enc, b_enc, W_dec, b_dec, requires_grad=False):
        """A module whose parameters are the given tensors (no copy)."""
        model = cls(*W_dec.shape[::-1], sparsifier, dtype=W_dec.dtype, device="meta")
        tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
        for name, tensor in tensors.items():
            setattr(model, name, torch.nn.Parameter(tensor, requires_grad=requires_grad))
        return model

    @property
    def n_latents(self):
        return self.W_dec.shape[0]

    @torch.no_grad()
    def reset_parameters(self, generator, b_dec):
        """Random decoder directions at the sparsifier's norm, tied encoder, given ``b_dec``.

        Directions are drawn on the CPU from ``generator`` so that a seed gives the same
        model whatever the device.
        """
        directions = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float64)
        directions *= self.sparsifier.decoder_init_norm / directions.norm(dim=1, keepdim=True)
        self.W_dec.copy_(directions)
        self.W_enc.copy_(directions)
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec)

    @torch.no_grad()
    def scale_encoder_(self, sample):
        """Scale the encoder by the factor whose training codes best reconstruct ``sample``.

        While ``b_enc`` is zero the codes of ReLU, TopK and BatchTopK scale with the
        encoder, and JumpReLU's with the encoder and its thresholds together, so the
        factor ``c = <x - b_dec, W_dec^T h> / ||W_dec^T h||^2``, summed over the sample,
        makes the initial reconstructions as close to the data as a single scale can. A
        tied encoder starts far off when latents outnumber features many times: several
        latents lie along each sample, each reconstructs most of it, and their sum
        overshoots. With 512 latents over 16 features, BatchTopK, where a large sample
        takes many latents, and JumpReLU had first-epoch losses of 120 and 1200 without
        the factor (3 and 13 with it) and ended 10 epochs at FVUs of 5.4 and 27 (0.22 and
        0.02). The factor is kept only if positive and finite (no latent fires on
        constant data), and none is sought for a sparsifier whose codes should start
        small (:attr:`~sksae._nn.sparsifiers.Sparsifier.scaled_initial_encoder`).
        """
        if not self.sparsifier.scaled_initial_encoder:
            return
        # A copy: a training code may update its sparsifier (BatchTopK's threshold).
        probe = SparseAutoencoder.from_tensors(
            copy.deepcopy(self.sparsifier),
            W_enc=self.W_enc,
            b_enc=self.b_enc,
            W_dec=self.W_dec,
            b_dec=self.b_dec,
        )
        device = self.W_dec.device
        along = torch.zeros((), dtype=torch.float64, device=device)
        squared = torch.zeros((), dtype=torch.float64, device=device)
        for x in sample.split(rows_per_chunk(self.n_latents)):
            x = x.to(device)
            code = probe.training_code(x, probe.pre_activation(x))
            directions = probe.decode_directions(code).to(torch.float64)
            along += directions.flatten() @ (x - self.b_dec).to(torch.float64).flatten()
            squared += directions.square().sum()
        factor = (along / squared).item()
        if math.isfinite(factor) and factor > 0:
            self.W_enc.mul_(factor)
            # JumpReLU's thresholds follow: the same latents fire as in the probe, whose
            # codes the factor was fitted to.
            self.sparsifier.scale_latents_(self.W_enc.new_full((self.n_latents,), factor))

    def pre_activation(self, x, *, out=None):
        """``(x - b_dec) @ W_enc^T + b_enc``, differentiable; written into ``out``, in its
        dtype, when given (a tensor that autograd does not see as a view of another: a
        ``detach()`` of a slice is not)."""
        if out is None:
            out = x.new_empty((x.shape[0], self.n_latents), dtype=self.W_enc.dtype)
        return _EncoderInto.apply(x, self.W_enc, self.b_enc, self.b_dec, out)

    def training_code(self, x, pre):
        """The training code of ``x``, whose pre-activations are ``pre``.

        ``pre`` may be in a lower precision than the model (autocast); the code is in the
        model's, unless it is dense and the sparsifier allows a low-precision one
        (:attr:`Sparsifier.low_precision_code`). When the sparsifier keeps a few latents per row
        (:meth:`Sparsifier.trains_sparse`), the gradient reaches the encoder through the
        chosen entries alone, and ``pre`` is never differentiated (it may come from
        ``pre_activation(x, out=...)``): the backward pass costs
        ``O(batch * k * n_features)`` instead of a second dense matmul. A dense code may
        be written over ``pre`` (ReLU's, JumpReLU's and BatchTopK's are), whose values
        are then lost, and the backward pass may write its gradient over the code: read
        the code before ``backward``.
        """
        if not self.sparsifier.trains_sparse(self.n_latents):
            if not self.sparsifier.low_precision_code:
                pre = pre.to(self.W_dec.dtype)
            return self.sparsifier(pre)
        indices = self.sparsifier.select(pre.detach())
        return Code(
            self.sparsifier.activate(self.selected_pre_activation(x, pre, indices)), indices
        )

    def selected_pre_activation(self, x, pre, indices):
        """``pre[b, indices[b, j]]``, differentiable through those entries alone."""
        return _SelectedEncoder.apply(x, self.W_enc, self.b_enc, self.b_dec, pre.detach(), indices)

    @torch.no_grad()
    def encode(self, x):
        """Inference code of each row of ``x`` (row-independent), not differentiable:
        training differentiates :meth:`training_code`, and JumpReLU's and BatchTopK's
        inference codes are written over the pre-activations."""
        return self.sparsifier.encode(self.pre_activation(x))

    def pursue(self, x, n_candidates):
        """Encoder-guided pursuit code of ``x`` (:func:`~sksae._nn.pursuit.pursue`).

        The ``n_candidates`` largest pre-activations of each row are its candidate
        atoms, of which the pursuit picks as many as the (TopK) sparsifier keeps.
        """
        candidates = self.pre_activation(x).topk(n_candidates, dim=1, sorted=False).indices
        return pursue(x - self.b_dec, self.W_dec, candidates, self.sparsifier.k)

    def decode(self, code):
        """Reconstruction ``W_dec^T h + b_dec`` of a :class:`Code`."""
        return self.decode_directions(code) + self.b_dec

    def decode_directions(self, code):
        """``W_dec^T h``: the code's combination of decoder rows, without the bias."""
        if code.indices is None:
            return code.values @ self.W_dec
        # Only the k chosen decoder rows are read (and receive gradient).
        return _SparseRowsProduct.apply(code.values, code.indices, self.W_dec)

    def forward(self, x):
        """Training pass: ``(x_hat, code)``; a dense code holds its gradient after the
        backward pass (:meth:`training_code`)."""
        code = self.training_code(x, self.pre_activation(x))
        return self.decode(code), code

    def decoder_norms(self):
        return self.W_dec.norm(dim=1)

    @torch.no_grad()
    def normalize_decoder(self):
        """Rescale decoder rows to unit norm (for sparsifiers that ask for it)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(
            torch.finfo(self.W_dec.dtype).tiny
        )

    @torch.no_grad()
    def fold_decoder_norms_(self):
        """Give the decoder unit rows without changing the model: each row's norm moves
        into its encoder row, its encoder bias and the sparsifier's parameters, so that
        the latent's code grows by what its row loses.

        Returns False, changing nothing, where the sparsifier's code cannot follow (a
        TopK selection compares latents, which the norms would rescale unevenly).
        """
        norms = self.W_dec.norm(dim=1)
        norms = torch.where(norms > 0, norms, 1.0)  # a zero row stays as it is
        if not self.sparsifier.scale_latents_(norms):
            return False
        self.W_dec /= norms[:, None]
        self.W_enc *= norms[:, None]
        self.b_enc *= norms
        return True

    @torch.no_grad()
    def remove_parallel_decoder_grad(self):
        """Project out the gradient component along each (unit) decoder row.

        Under a unit-norm constraint that component only changes the row's norm, which the
        renormalisation after the step undoes; leaving it in would distort Adam's moments.
        """
        grad = self.W_dec.grad
        if grad is not None:
            grad -= (grad * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec


#: Devices on which the products with a sparse code gather and sum rows with
#: ``embedding_bag``, faster there than CSR products (:func:`_rows_product`); the others
#: multiply CSR matrices.
_GATHER_SUM_DEVICES = frozenset({"cpu"})


def _rows_product(values, indices, dense):
    """``S @ dense``, with ``S`` the ``[batch, len(dense)]`` matrix of ``values`` at
    ``indices`` (``[batch, k]`` each): row ``b`` sums ``values[b, j] * dense[indices[b, j]]``.

    An ``embedding_bag`` on the CPU, a CSR product on a GPU; measured at 4096 rows, k=32
    of 4096 latents and 512 features, the CPU's ``embedding_bag`` took 3-4 ms against 8
    for its CSR product.
    """
    if dense.device.type in _GATHER_SUM_DEVICES:
        return F.embedding_bag(indices, dense, per_sample_weights=values, mode="sum")
    return _code_matrix(values, indices, dense.shape[0]) @ dense


def _transposed_rows_product(values, indices, dense, n_latents):
    """``S^T @ dense``, ``[n_latents, n_features]``, for the ``S`` of :func:`_rows_product`
    (``dense`` has one row per row of ``S``): the row of latent ``i`` sums
    ``values[b, j] * dense[b]`` over the entries with ``indices[b, j] == i``.

    The entries are sorted by latent into a CSR layout of ``S^T``, which costs less than
    a product with the transposed (CSC) matrix, which torch converts first, and on a GPU
    spares the host a wait on the device. On the CPU an ``embedding_bag`` with one bag
    per latent then sums the rows, twice as fast as the CSR product (3.4 against 6-7 ms
    at the shape of :func:`_rows_product`).
    """
    n_rows, k = indices.shape
    flat = indices.flatten()
    order = flat.argsort(stable=True)
    latents = torch.arange(n_latents + 1, device=flat.device)
    latent_starts = torch.searchsorted(flat[order], latents)
    rows, weights = order // k, values.flatten()[order]
    if dense.device.type in _GATHER_SUM_DEVICES:
        return F.embedding_bag(
            rows, dense, offsets=latent_starts[:-1], per_sample_weights=weights, mode="sum"
        )
    return _csr(latent_starts, rows, weights, (n_latents, n_rows)) @ dense


def _code_matrix(values, indices, n_latents):
    """The code of ``values`` at ``indices`` (``[batch, k]`` each) as a CSR matrix."""
    n_rows, k = indices.shape
    row_starts = torch.arange(0, n_rows * k + 1, k, device=indices.device)
    return _csr(row_starts, indices.flatten(), values.flatten(), (n_rows, n_latents))


def _csr(row_starts, columns, values, shape):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        return torch.sparse_csr_tensor(row_starts, columns, values, shape, check_invariants=False)


class _SparseRowsProduct(torch.autograd.Function):
    """``S @ weight`` for the matrix ``S`` of ``values`` at ``indices``
    (:func:`_rows_product`).

    The backward pass touches the selected rows alone: the weight's gradient is
    ``S^T @ grad`` (:func:`_transposed_rows_product`) and the values' gradient the
    entries of ``grad @ weight^T`` at S's pattern (a sampled CSR product). On the CPU
    that is about twice as fast as ``embedding_bag``'s own backward, and much faster
    on a GPU at wide inputs.
    """

    @staticmethod
    def forward(ctx, values, indices, weight):
        ctx.save_for_backward(values, indices, weight)
        return _rows_product(values, indices, weight)

    @staticmethod
    def backward(ctx, grad):
        values, indices, weight = ctx.saved_tensors
        grad = grad.contiguous()  # a loss's sum passes an expanded, zero-stride gradient
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            pattern = _code_matrix(torch.zeros_like(values), indices, weight.shape[0])
            sampled = torch.sparse.sampled_addmm(pattern, grad, weight.T, beta=0)
            grad_values = sampled.values().view_as(values)
        if ctx.needs_input_grad[2]:
            grad_weight = _transposed_rows_product(values, indices, grad, weight.shape[0])
        return grad_values, None, grad_weight


class _EncoderInto(torch.autograd.Function):
    """The pre-activations ``(x - b_dec) @ weight^T + b_enc`` written into ``out``, in its
    dtype, with the gradients of ``F.linear``.

    The input is centred before the product (and before a cast to a lower ``out`` dtype,
    under autocast). Folding ``b_dec`` into the bias instead, ``x @ weight^T + (b_enc -
    weight @ b_dec)``, spares that ``[batch, n_features]`` subtraction, but for data far
    from the origin both terms are large and nearly equal, and their difference keeps
    little but rounding: at an offset of 1000 per coordinate (unit spread, 512 features)
    float32 pre-activations were 1000 times further from the exact ones, and 2% of the
    rows changed their top 32; in bfloat16 a TopK fit's score fell from 0.577 to 0.522 at
    an offset of 50. ``b_dec``'s gradient through the encoder, ``-weight^T`` times the
    bias's, costs a matrix-vector product (:func:`_encoder_bias_grads`), not the
    ``[batch, n_features]`` matmul that autograd through the subtraction would.

    ``out`` is a buffer that every training step reuses: a dense code's pre-activations,
    where a fresh product is freshly mapped memory on the CPU (its page faults took
    19 ms a step at 4096 x 4096 in float32).
    """

    @staticmethod
    def forward(ctx, x, weight, b_enc, b_dec, out):
        dtype = out.dtype
        centred, weight_cast = (x - b_dec).to(dtype), weight.to(dtype)
        ctx.save_for_backward(centred, weight_cast, weight)
        ctx.x_dtype = x.dtype
        ctx.mark_dirty(out)
        return torch.addmm(b_enc.to(dtype), centred, weight_cast.T, out=out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        centred, weight_cast, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight_cast).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.T @ centred).to(weight.dtype)
        # Summed in the gradient's dtype (accumulating in float32) and then cast: on the
        # CPU a sum into another dtype would first copy the whole gradient to it.
        grad_bias = grad.sum(dim=0).to(weight.dtype)
        grad_biases = _encoder_bias_grads(ctx.needs_input_grad[2:4], grad_bias, weight)
        return grad_x, grad_weight, *grad_biases, None


class _SelectedEncoder(torch.autograd.Function):
    """Entries ``indices`` of the rows of ``pre = (x - b_dec) @ weight^T + b_enc``,
    already computed.

    The backward pass touches the selected entries only: with ``S`` the sparse
    ``[batch, n_latents]`` matrix of their gradients, the weight gradient is
    ``S^T @ (x - b_dec)`` (:func:`_transposed_rows_product`, many times faster than
    ``index_add_`` over the ``batch * k`` rows on the CPU, and than the ``index_add_`` of
    ``batch * k`` materialised rows that sparsify uses on a GPU), the biases' gradients
    from a scatter-add of ``S`` (:func:`_encoder_bias_grads`), and the input gradient
    ``S @ weight``.
    """

    @staticmethod
    def forward(ctx, x, weight, b_enc, b_dec, pre, indices):
        ctx.save_for_backward(x, weight, b_dec, indices)
        # In the weights' dtype even when ``pre`` is low precision (autocast).
        return pre.gather(1, indices).to(weight.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, b_dec, indices = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _rows_product(grad, indices, weight)
        if ctx.needs_input_grad[1]:
            # Centred, as in the forward pass (:class:`_EncoderInto`).
            grad_weight = _transposed_rows_product(grad, indices, x - b_dec, weight.shape[0])
        grad_bias = grad.new_zeros(weight.shape[0]).index_add_(0, indices.flatten(), grad.flatten())
        grad_biases = _encoder_bias_grads(ctx.needs_input_grad[2:4], grad_bias, weight)
        return grad_x, grad_weight, *grad_biases, None, None


def _encoder_bias_grads(needs, grad_bias, weight):
    """The gradients of ``b_enc`` and ``b_dec`` (where ``needs`` says) through the
    encoder ``(x - b_dec) @ weight^T + b_enc``, whose bias has the gradient ``grad_bias``:
    ``b_dec``'s is ``-weight^T @ grad_bias``."""
    needs_b_enc, needs_b_dec = needs
    grad_b_dec = weight.T.mv(grad_bias).neg_() if needs_b_dec else None
    return grad_bias if needs_b_enc else None, grad_b_dec


#: Rows of the data whose distances to the median are taken at a time.
_MEDIAN_BLOCK_ROWS = 256


def geometric_median(X, *, max_iter=100, tol=1e-6):
    """Geometric median of the rows of ``X`` by Weiszfeld's iterations, in float64.

    The median, not the mean, is the initial decoder bias: it is the point that
    minimises the summed distance to the data, robust to the heavy tails of activations.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.module import geometric_median
    >>> X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    >>> geometric_median(X).round(decimals=2)
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    X = X.to(torch.float64)
    # The distances by blocks of rows and the weighted sum as a product: temporaries
    # the size of X would double or triple the memory the median takes.
    blocks = X.split(_MEDIAN_BLOCK_ROWS)
    median = X.mean(dim=0)
    for _ in range(max_iter):
        distances = torch.cat([(block - median).norm(dim=1) for block in blocks])
        weights = 1.0 / distances.clamp_min(1e-12)
        updated = weights @ X / weights.sum()
        shift = (updated - median).norm()
        median = updated
        if shift <= tol * (1.0 + median.norm()):
            break
    return median
