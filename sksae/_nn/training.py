"""The minibatch training loop: Adam on a :class:`~sksae._nn.module.SparseAutoencoder`.

The loop keeps the host out of the inner step: losses and firing counts accumulate on
the device and are read once per pass over the data.
"""

import math
from typing import NamedTuple

import torch

#: An epoch's mean loss above this multiple of the reference loss (the loss of the
#: all-zero code plus the mean squared norm of the data) means the fit is running away: a
#: working SAE never does orders of magnitude worse than reconstructing nothing.
DIVERGENCE_FACTOR = 1e3


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite or grew far beyond its starting value."""


class Trainer:
    """Adam on the reconstruction loss (+ ``alpha`` times the sparsifier's penalty).

    Parameters
    ----------
    model : SparseAutoencoder
    learning_rate : float
    alpha : float
        Weight of the sparsifier's penalty (ignored by sparsifiers without one).
    alpha_warmup_steps : int
        ``alpha`` grows linearly from 0 to its value over this many steps, so that an L1
        penalty does not kill latents before the reconstruction has shaped them.
    n_steps : int
        Steps already taken (continuing an earlier fit).
    optimizer_state : dict or None
        Adam's state from :meth:`optimizer_state` of an earlier trainer, to continue it.
    reference_loss : float or None
        The yardstick for divergence, in the units of the loss; measured on the first
        batch when ``None``.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.module import SparseAutoencoder
    >>> from sksae._nn.sparsifiers import TopK
    >>> from sksae._nn.training import Trainer
    >>> X = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    >>> sae = SparseAutoencoder(8, 32, TopK(k=4))
    >>> sae.reset_parameters(torch.Generator().manual_seed(0), b_dec=X.mean(0))
    >>> trainer = Trainer(sae, learning_rate=1e-2)
    >>> first = trainer.run_epoch(X, batch_size=64).loss
    >>> last = [trainer.run_epoch(X, batch_size=64) for _ in range(20)][-1].loss
    >>> last < first
    True
    """

    def __init__(
        self,
        model,
        *,
        learning_rate,
        alpha=0.0,
        alpha_warmup_steps=0,
        n_steps=0,
        optimizer_state=None,
        reference_loss=None,
    ):
        self.model = model
        self.alpha = alpha
        self.alpha_warmup_steps = alpha_warmup_steps
        self.n_steps = n_steps
        self.reference_loss = reference_loss
        self.optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
            # The saved state carries the old learning rate; the caller's one wins.
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate

    def _alpha_now(self):
        if self.n_steps >= self.alpha_warmup_steps:
            return self.alpha
        return self.alpha * (self.n_steps + 1) / self.alpha_warmup_steps

    def loss(self, x):
        """Training loss of a batch: mean squared error summed over features (+ penalty)."""
        x_hat, code = self.model(x)
        loss = (x - x_hat).square().sum(dim=1).mean()
        penalty = self.model.sparsifier.penalty(code, self.model.decoder_norms())
        if penalty is not None and self.alpha:
            loss = loss + self._alpha_now() * penalty
        return loss, code

    def step(self, x):
        """One Adam step on the batch ``x``; returns the detached loss and the code."""
        if self.reference_loss is None:
            # The data's own scale enters too: with a single sample, the zero-code loss
            # is 0 and any rounding error would look like divergence.
            with torch.no_grad():
                zero_code_loss = (x - self.model.b_dec).square().sum(dim=1).mean()
                self.reference_loss = float(zero_code_loss + x.square().sum(dim=1).mean())
        self.optimizer.zero_grad(set_to_none=True)
        loss, code = self.loss(x)
        loss.backward()
        unit_norm = self.model.sparsifier.unit_norm_decoder
        if unit_norm:
            self.model.remove_parallel_decoder_grad()
        self.optimizer.step()
        if unit_norm:
            self.model.normalize_decoder()
        self.n_steps += 1
        return loss.detach(), code

    def run_epoch(self, X, batch_size, *, generator=None):
        """One pass over the rows of ``X`` in minibatches, shuffled when a generator is given.

        Returns an :class:`EpochStats`; raises :class:`TrainingDiverged` if the mean loss
        is non-finite or more than ``DIVERGENCE_FACTOR`` times the zero-code loss.
        """
        n_samples = X.shape[0]
        order = None if generator is None else torch.randperm(n_samples, generator=generator)
        if order is not None:
            order = order.to(X.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
        fired = torch.zeros(self.model.n_latents, dtype=torch.float64, device=X.device)
        for start in range(0, n_samples, batch_size):
            rows = slice(start, start + batch_size)
            batch = X[rows] if order is None else X[order[rows]]
            loss, code = self.step(batch)
            loss_sum += loss * batch.shape[0]
            _count_firings(fired, code)
        loss = loss_sum.item() / n_samples
        self._check_divergence(loss)
        return EpochStats(loss=loss, feature_density=(fired / n_samples).cpu())

    def _check_divergence(self, loss):
        limit = DIVERGENCE_FACTOR * max(self.reference_loss, torch.finfo(torch.float32).tiny)
        if not math.isfinite(loss) or loss > limit:
            raise TrainingDiverged(
                f"the mean training loss reached {loss:.3g}, against {self.reference_loss:.3g} "
                "for the all-zero code and the data's squared norm together"
            )

    def optimizer_state(self):
        """Adam's state, to pass as ``optimizer_state`` of a later trainer."""
        return self.optimizer.state_dict()


class EpochStats(NamedTuple):
    """What one pass over the data measured: mean loss, and how often each latent fired."""

    loss: float
    feature_density: torch.Tensor


def _count_firings(fired, code):
    # A float mask, not boolean indexing: indexing by a mask would sync with the host.
    active = (code.values != 0).to(fired.dtype)
    if code.indices is None:
        fired += active.sum(dim=0)
    else:
        fired.index_add_(0, code.indices.flatten(), active.flatten())
