"""The minibatch training loop: Adam on a :class:`~sksae._nn.module.SparseAutoencoder`.

The loop keeps the host out of the inner step: losses, firing counts and dead-latent
clocks live on the device and are read once per pass over the data.
"""

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .batches import INFERENCE_CHUNK_ROWS, rows_per_chunk, squared_norm_sum
from .sparsifiers import Code, count_true

#: An epoch's mean squared error above this multiple of the reference (the squared error
#: of the all-zero code plus the mean squared norm of the data, over the same epoch)
#: means the fit is running away: a working SAE never does orders of magnitude worse
#: than reconstructing nothing.
DIVERGENCE_FACTOR = 1e3
#: Rows of an epoch's first and last batches that the model reconstructs before and
#: after the pass's first or last step (:attr:`EpochStats.last_step_fvu`,
#: :attr:`EpochStats.first_rows_growth`): the same rows, before and after.
WATCHED_ROWS = 64


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite or grew far beyond its starting value."""


class GradientOverflow(TrainingDiverged):
    """A gradient's square overflowed the model's dtype in Adam's running average, which
    freezes every weight it reaches: data or a penalty too large for the dtype, whatever
    the learning rate."""


@dataclass
class Schedule:
    """Multipliers of the learning rate and of ``alpha`` at each step.

    ``alpha`` warms up linearly over the steps from ``alpha_warmup_start`` to
    ``alpha_warmup_end`` (a stream of chunks lays the ramp where its samples put it): an
    L1 penalty at full strength from the first step kills latents before the
    reconstruction has shaped them. The learning rate rises linearly over the first
    ``learning_rate_warmup_steps`` steps of the model (none by default: Adam's bias
    correction already keeps the first steps small), is flat, then decays linearly to
    zero over ``decay_steps`` from ``decay_start`` (never, when ``None``).

    Examples
    --------
    >>> from sksae._nn.training import Schedule
    >>> schedule = Schedule(alpha_warmup_end=2, decay_start=4, decay_steps=2)
    >>> [schedule.alpha_factor(step) for step in range(3)]
    [0.5, 1.0, 1.0]
    >>> [schedule.learning_rate_factor(step) for step in range(7)]
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    >>> warming = Schedule(learning_rate_warmup_steps=4)
    >>> [warming.learning_rate_factor(step) for step in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """

    alpha_warmup_start: float = 0.0
    alpha_warmup_end: int = 0
    decay_start: int | None = None
    decay_steps: int = 0
    learning_rate_warmup_steps: int = 0

    def alpha_factor(self, step):
        if step >= self.alpha_warmup_end:
            return 1.0
        ramp = self.alpha_warmup_end - self.alpha_warmup_start
        return (step + 1 - self.alpha_warmup_start) / ramp

    def learning_rate_factor(self, step):
        warm_up = min(1.0, (step + 1) / max(self.learning_rate_warmup_steps, 1))
        if self.decay_start is None or step < self.decay_start:
            return warm_up
        decay = (self.decay_start + self.decay_steps - step) / max(self.decay_steps, 1)
        return warm_up * max(0.0, decay)

    def warming_up(self, step):
        """Whether ``alpha`` or the learning rate is still warming up at ``step``."""
        return step < max(self.alpha_warmup_end, self.learning_rate_warmup_steps)

    def decay_over(self, start, n_steps):
        """Anneal linearly to zero over ``n_steps`` from ``start``."""
        self.decay_start, self.decay_steps = start, n_steps

    def decaying(self, step):
        return self.decay_start is not None and step >= self.decay_start

    def finished(self, step):
        """Whether the decay has brought the learning rate to zero by ``step``."""
        return self.decay_start is not None and step >= self.decay_start + self.decay_steps


class AuxK(NamedTuple):
    """The auxiliary loss that revives dead latents (Gao et al., 2024, appendix A.2).

    A latent is dead after ``dead_steps`` steps without firing. The residual
    ``e = x - x_hat`` (detached) is reconstructed from the ``k`` largest pre-activations
    of dead latents, through the decoder rows alone: ``e`` already excludes ``b_dec``, so
    adding it to ``e_hat`` would count it twice. The loss is
    ``coef * ||e - e_hat||^2 / ||e - mean(e)||^2``.
    """

    k: int
    coef: float
    dead_steps: int


class EpochStats(NamedTuple):
    """What one pass over the data measured, with the weights of each step.

    ``loss`` is the training objective (:meth:`Trainer.loss`, without the AuxK term) and
    ``fvu`` the squared error over the data's variance,
    both means over the pass; ``l0`` the mean number of active latents per sample;
    ``feature_density`` the fraction of samples each latent fired on.
    """

    loss: float
    fvu: float
    l0: float
    feature_density: torch.Tensor
    #: The FVU after the pass's last step, which ``fvu`` does not see (the only step of a
    #: one-batch pass): ``fvu`` times the factor by which that step multiplied the
    #: squared error of a few rows of its batch. The rows' own FVU would be noisy: a
    #: last batch of one row, or of the loudest rows, is common.
    last_step_fvu: float = math.nan
    #: The factor by which the pass multiplied the squared error of a few rows of its
    #: first batch, from before its first step to after its last: what the pass did to
    #: the model as it found it, on rows it was then given.
    first_rows_growth: float = math.nan


class Trainer:
    """Adam on the reconstruction loss (+ ``alpha`` times the sparsifier's penalty).

    Parameters
    ----------
    model : SparseAutoencoder
    learning_rate : float
        Peak learning rate; :class:`Schedule` scales it at each step.
    alpha : float
        Weight of the sparsifier's penalty (ignored by sparsifiers without one).
    schedule : Schedule or None
        Learning-rate and ``alpha`` multipliers; constant when ``None``.
    auxk : AuxK or None
        Auxiliary loss for dead latents, used with sparsifiers that support it.
    state : dict or None
        :meth:`state_dict` of an earlier trainer of the same model, to continue it.
    max_grad_norm : float or None
        Clip the global L2 norm of the gradients to this value before each step (after
        the decoder-parallel component is removed); ``None`` does not clip.
    autocast_dtype : torch dtype or None
        Low-precision dtype (``torch.bfloat16``) of the encoder's matmul (its centred
        input, weights and bias cast down) and of the dense decoder's (under
        :func:`torch.autocast`), forward and backward. A TopK
        selection reads the low-precision pre-activations, and the dense codes of the
        sparsifiers that allow it stay in low precision
        (:attr:`~sksae._nn.sparsifiers.Sparsifier.low_precision_code`); the chosen
        values, the other codes, the sparse decoder, the loss, the weights, the
        optimiser and the statistics stay in the model's dtype. float64 models are not
        cast.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.module import SparseAutoencoder
    >>> from sksae._nn.sparsifiers import TopK
    >>> from sksae._nn.training import Trainer
    >>> from sksae._nn.batches import DenseRows
    >>> X = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    >>> sae = SparseAutoencoder(8, 32, TopK(k=4))
    >>> sae.reset_parameters(torch.Generator().manual_seed(0), b_dec=X.mean(0))
    >>> X = DenseRows(X)
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
        schedule=None,
        auxk=None,
        state=None,
        max_grad_norm=None,
        autocast_dtype=None,
    ):
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.autocast_dtype = autocast_dtype
        self.learning_rate = learning_rate
        self.alpha = alpha
        #: Learning-rate and alpha multipliers; the caller may replace it between steps.
        self.schedule = schedule or Schedule()
        self.auxk = auxk
        self.optimizer = _adam(model.parameters(), learning_rate)
        device = model.W_dec.device
        self.n_steps = 0
        self.steps_since_fired = torch.zeros(model.n_latents, dtype=torch.int64, device=device)
        self._pre_buffer = None
        # The latents AuxK trains until the next check, as a mask and as indices (None
        # when there are none).
        self._auxk_dead = self._auxk_latents = None
        if state is not None:
            self.load_state_dict(state)
        if self._auxk_dead is None:
            self._refresh_auxk()

    def _refresh_auxk(self):
        """Find the latents AuxK trains until the next check: those dead now.

        A latent needs ``dead_steps`` steps without firing to die, so checking every
        ``dead_steps`` steps finds each dead latent at most that late, for one host sync
        per check, and a fit without dead latents skips AuxK's cost entirely.
        """
        dead = torch.zeros_like(self.steps_since_fired, dtype=torch.bool)
        if self.auxk is not None and self.model.sparsifier.needs_auxk:
            dead = self.steps_since_fired >= self.auxk.dead_steps
        self._set_auxk_dead(dead)

    def _set_auxk_dead(self, dead):
        self._auxk_dead = dead
        latents = dead.nonzero().flatten()
        self._auxk_latents = latents if len(latents) else None

    def loss(self, x):
        """The loss to minimise on a batch, the training objective within it, its squared
        error alone (summed over features, mean over rows), and the code (which the
        backward pass may overwrite: see :meth:`SparseAutoencoder.training_code`).

        The objective is the squared error plus ``alpha`` times the sparsifier's penalty.
        The loss adds the AuxK term, which trains dead latents and measures nothing of
        the model; the statistics of an epoch, and so the stop rule, watch the objective.
        """
        model = self.model
        pre = self._pre_activation(x)
        auxk_code = None
        if self._auxk_latents is not None:
            # Before the training code, which may be written over ``pre``.
            auxk_code = self._auxk_code(x, pre)
        code = model.training_code(x, pre)
        penalty = None
        if model.sparsifier.penalised and self.alpha:
            # Before the decoder: the backward pass then meets the decoder's gradient of
            # the code first, a fresh tensor, and adds the penalty's into it in place;
            # in the other order it sums them into a new [batch, n_latents] tensor.
            penalty = model.sparsifier.penalty(code, model.decoder_norms())
        # A dense code's decoder product is the other big matmul; a sparse code's stays
        # in the model's dtype.
        with self._low_precision(x.device, enabled=code.indices is None):
            x_hat = model.decode(code)
        # One fused pass each way, where the difference, its square and their sums
        # would take several over [batch, n_features].
        squared_error = F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]
        objective = squared_error
        if penalty is not None:
            alpha = self.alpha * self.schedule.alpha_factor(self.n_steps)
            objective = squared_error + alpha * penalty
        loss = objective
        if auxk_code is not None:
            residual = (x - x_hat).detach()
            loss = objective + self.auxk.coef * self.aux_loss(auxk_code, residual)
        return loss, objective, squared_error, code

    def _pre_activation(self, x):
        """The pre-activations of the batch ``x``, written into a buffer that every step
        reuses: differentiable for a dense code, not for a sparse one.

        A sparse code's gradient reaches the encoder through the chosen entries alone
        (:meth:`SparseAutoencoder.training_code`), so its ``pre`` needs no autograd. On the
        CPU a new ``[batch, n_latents]`` tensor of over 32 MB is freshly mapped memory:
        faulting its pages in took 20 ms a step at 4096 x 4096 in float32, a tenth of a
        TopK step. The dense codes of ReLU, JumpReLU and BatchTopK are written over the
        buffer, and their gradients over the code.
        """
        model = self.model
        dtype = model.W_enc.dtype
        if self.autocast_dtype is not None and dtype != torch.float64:
            dtype = self.autocast_dtype  # as autocast would: float64 is never cast
        rows = x.shape[0]
        buffer = self._pre_buffer
        if buffer is None or buffer.shape[0] < rows or buffer.dtype != dtype:
            buffer = torch.empty(rows, model.n_latents, dtype=dtype, device=x.device)
            self._pre_buffer = buffer
        # Not a view of the buffer, which autograd would make differentiable too.
        out = buffer[:rows].detach()
        if model.sparsifier.trains_sparse(model.n_latents):
            with torch.no_grad():
                return model.pre_activation(x, out=out)
        return model.pre_activation(x, out=out)

    def _low_precision(self, device, enabled=True):
        enabled = enabled and self.autocast_dtype is not None
        # No cache of cast weights: autocast clears it on leaving its outermost region
        # alone, and within another (the caller's, or own_modes') the optimiser's
        # updates would meet last step's bfloat16 copies.
        return torch.autocast(
            device.type, dtype=self.autocast_dtype, enabled=enabled, cache_enabled=False
        )

    def _auxk_code(self, x, pre):
        """The dead latents' code that AuxK reconstructs the residual from.

        The candidates are the latents found dead at the last check
        (:meth:`_refresh_auxk`); one that has fired since contributes nothing. Each row
        uses the ``AuxK.k`` largest pre-activations of the candidates (ReLU'd), all of
        them when there are fewer. Selecting among the candidates' columns alone makes
        AuxK cost in proportion to the dead latents, usually few, rather than to
        ``n_latents * AuxK.k``: with every latent a candidate, AuxK (k=256) took a TopK
        step (k=32) from 156 to 400 ms at 4096 x 4096 latents on the CPU.
        """
        latents = self._auxk_latents
        candidate_pre = pre.detach().index_select(1, latents)
        chosen = candidate_pre.topk(min(self.auxk.k, len(latents)), dim=1, sorted=False).indices
        indices = latents[chosen]
        still_dead = (self.steps_since_fired >= self.auxk.dead_steps)[indices]
        values = F.relu(self.model.selected_pre_activation(x, pre, indices)) * still_dead
        return Code(values, indices)

    def aux_loss(self, auxk_code, residual):
        """AuxK's normalised reconstruction of ``residual`` from ``auxk_code``
        (:meth:`_auxk_code`)."""
        residual_hat = self.model.decode_directions(auxk_code)
        error = (residual - residual_hat).square().sum()
        scale = (residual - residual.mean(dim=0)).square().sum()
        # Residuals that do not spread (a batch of one row, or of identical rows) leave
        # nothing to normalise by: no term, where dividing by ~0 would put inf into Adam's
        # moments and freeze the dead latents for good.
        spread = scale > torch.finfo(scale.dtype).eps * residual.square().sum()
        return torch.where(spread, error / torch.where(spread, scale, 1.0), 0.0)

    def step(self, x):
        """One Adam step on the batch ``x``; returns the objective and the squared error
        (detached) of :meth:`loss`, and how many rows each latent fired on (float64)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate * self.schedule.learning_rate_factor(self.n_steps)
        if self.auxk is not None and self.n_steps % self.auxk.dead_steps == 0:
            self._refresh_auxk()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.sparsifier.training_step = self.n_steps
        loss, objective, squared_error, code = self.loss(x)
        # Before the backward pass, which may write the gradient over a dense code.
        fired = _firings(code, self.model.n_latents)
        loss.backward()
        unit_norm = self.model.sparsifier.unit_norm_decoder
        if unit_norm:
            self.model.remove_parallel_decoder_grad()
        if self.max_grad_norm is not None:
            # foreach kernels, and no host sync: the norm stays on the device.
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.max_grad_norm, foreach=True
            )
        self.optimizer.step()
        if unit_norm:
            self.model.normalize_decoder()
        self.model.sparsifier.constrain_()
        self.n_steps += 1
        return objective.detach(), squared_error.detach(), fired

    def run_epoch(self, X, batch_size, *, generator=None):
        """One pass over ``X`` (:class:`~sksae._nn.batches.DenseRows` or ``SparseRows``)
        in minibatches, shuffled when a generator is given.

        Returns an :class:`EpochStats`; raises :class:`TrainingDiverged` if the mean loss
        is non-finite, the mean squared error more than ``DIVERGENCE_FACTOR`` times the
        reference of the same rows, a weight or Adam's moment non-finite, or the squared
        error of a few rows of the last batch, after the last step, beyond the model's
        dtype.
        """
        n_samples = len(X)
        order = None
        if generator is not None:
            order = torch.randperm(n_samples, generator=generator).to(X.device)
        # Sums of the loss, the squared error, the active count and the reference loss,
        # in float64.
        sums = torch.zeros(4, dtype=torch.float64, device=X.device)
        fired = torch.zeros(self.model.n_latents, dtype=torch.float64, device=X.device)
        for start in range(0, n_samples, batch_size):
            rows = slice(start, start + batch_size)
            batch = X.take(rows if order is None else order[rows])
            with torch.no_grad():
                # The data's own scale enters too: with a single sample, the zero-code
                # loss is 0 and any rounding error would look like divergence.
                reference = squared_norm_sum(batch - self.model.b_dec) + squared_norm_sum(batch)
            if start == 0:
                first_rows = batch[:WATCHED_ROWS]
                first_before = _inference_squared_error(self.model, first_rows)
            if start + batch_size >= n_samples:
                last_rows = batch[:WATCHED_ROWS]
                error_before = _inference_squared_error(self.model, last_rows) / len(last_rows)
            loss, squared_error, fired_now = self.step(batch)
            n_rows = batch.shape[0]
            sums += torch.stack([loss * n_rows, squared_error * n_rows, fired_now.sum(), reference])
            fired += fired_now
            self.steps_since_fired = (self.steps_since_fired + 1).masked_fill_(fired_now > 0, 0)
        # The losses are those before each step: what the last step did (the only step
        # of a one-batch partial_fit) shows in the model's reconstruction of a few of
        # its rows, before and after it, and in the weights and Adam's moments, read in
        # the same sync.
        error_after = _inference_squared_error(self.model, last_rows) / len(last_rows)
        first_after = _inference_squared_error(self.model, first_rows)
        moments = [
            moment
            for state in self.optimizer.state.values()
            for name, moment in state.items()
            if name in {"exp_avg", "exp_avg_sq"}
        ]
        finite = torch.stack([_all_finite(self.model.parameters()), _all_finite(moments)])
        errors = torch.stack([error_before, error_after, first_before, first_after])
        loss, squared_error, active, reference, *errors, weights_finite, moments_finite = torch.cat(
            [sums / n_samples, errors, finite.to(sums.dtype)]
        ).tolist()
        error_before, error_after, first_before, first_after = errors
        self._check_divergence(
            loss,
            squared_error,
            reference,
            error_after,
            weights_finite,
            moments_finite,
            dtype=self.model.W_dec.dtype,
        )
        fvu = _fvu(squared_error, X)
        return EpochStats(
            loss=loss,
            fvu=fvu,
            l0=active,
            feature_density=(fired / n_samples).cpu(),
            last_step_fvu=fvu * _growth(error_before, error_after),
            first_rows_growth=_growth(first_before, first_after),
        )

    @staticmethod
    def _check_divergence(
        loss, squared_error, reference, error_after, weights_finite, moments_finite, *, dtype
    ):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the mean training loss reached {loss}")
        if not weights_finite:
            raise TrainingDiverged("the last step left weights that are inf or NaN")
        if not moments_finite:
            raise GradientOverflow(
                f"a gradient passed {math.sqrt(torch.finfo(dtype).max):.2g}, whose square "
                f"overflowed {dtype} in Adam's running average"
            )
        # Only a NaN or an overflow is divergence after the last step: one Adam step
        # moves the weights by about the learning rate, which may take a poor fit of
        # small data far from them, but not without bound (see EpochStats.last_step_fvu).
        if not error_after <= torch.finfo(dtype).max:
            raise TrainingDiverged(
                f"the mean squared error after the last step reached {error_after:.3g}, "
                f"beyond the range of {dtype}"
            )
        # The squared error alone is judged: the penalty's scale is alpha's, not the
        # data's (JumpReLU's alpha * L0 of a wide model can dwarf small data's norm from
        # the first step), and a runaway fit runs away in its reconstruction too.
        limit = DIVERGENCE_FACTOR * max(reference, torch.finfo(torch.float32).tiny)
        if squared_error > limit:
            raise TrainingDiverged(
                f"the mean squared error reached {squared_error:.3g}, against {reference:.3g} "
                "for the all-zero code and the data's squared norm together"
            )

    def full_state(self):
        """The model's ``state_dict`` and this trainer's, as ``{"model", "trainer"}``."""
        return {"model": self.model.state_dict(), "trainer": self.state_dict()}

    def state_dict(self):
        """What a later trainer needs to continue this one (tensors and numbers)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "n_steps": self.n_steps,
            "steps_since_fired": self.steps_since_fired,
            "auxk_dead": self._auxk_dead,
        }

    def load_state_dict(self, state):
        # Its values were read where it came from a file (sksae.load): a pass over
        # Adam's moments at every partial_fit would cost a seventh of a one-batch call.
        problem = state_problem(state, self.model, values=False)
        if problem is not None:
            raise ValueError(f"This training state cannot continue the model: {problem}.")
        self.optimizer.load_state_dict(state["optimizer"])
        self.n_steps = state["n_steps"]
        self.steps_since_fired = state["steps_since_fired"].to(self.steps_since_fired.device)
        # States saved before AuxK kept its candidates have none: __init__ then looks
        # them up at once.
        if state.get("auxk_dead") is not None and self.auxk is not None:
            self._set_auxk_dead(state["auxk_dead"].to(self.steps_since_fired.device))


def _growth(before, after):
    """``after / before``: 1 where both are 0, inf where only ``before`` is."""
    if before > 0:
        return after / before
    return 1.0 if after == 0 else math.inf


def _adam(parameters, learning_rate):
    return torch.optim.Adam(parameters, lr=learning_rate, fused=True)


def state_problem(state, model, *, values=True):
    """Why ``state`` cannot continue training ``model``, or None where it can.

    ``state`` is a :meth:`Trainer.state_dict`, perhaps read from a file that another
    writer made: its Adam moments must have the shapes and dtypes of the parameters of
    ``model`` (in their order), and be finite, the second ones non-negative; its Adam
    options those of a trainer's; its clocks one per latent. Only the parameters' shapes
    and dtypes are read: ``model`` may be on the meta device. Without ``values``, the
    state's tensors are checked for their shapes and dtypes alone.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.module import SparseAutoencoder
    >>> from sksae._nn.sparsifiers import TopK
    >>> from sksae._nn.training import Trainer, state_problem
    >>> sae = SparseAutoencoder(4, 8, TopK(k=2))
    >>> state = Trainer(sae, learning_rate=1e-3).state_dict()
    >>> state_problem(state, sae) is None
    True
    >>> state_problem(state, SparseAutoencoder(4, 6, TopK(k=2), device="meta"))
    'steps_since_fired must be 6 int64 step counts, one per latent'
    """
    entries = {"optimizer", "n_steps", "steps_since_fired", "auxk_dead"}
    # auxk_dead: unknown to states saved before AuxK kept its candidates.
    if not isinstance(state, dict) or not entries - {"auxk_dead"} <= state.keys() <= entries:
        return f"it must be a dict of {', '.join(sorted(entries))}"
    n_latents = model.n_latents
    if not _is_count(state["n_steps"]):
        return "n_steps must be a non-negative int"
    clocks = state["steps_since_fired"]
    if not _is_tensor(clocks, (n_latents,), torch.int64, minimum=0, values=values):
        return f"steps_since_fired must be {n_latents} int64 step counts, one per latent"
    auxk_dead = state.get("auxk_dead")
    if auxk_dead is not None and not _is_tensor(auxk_dead, (n_latents,), torch.bool):
        return f"auxk_dead must be None or {n_latents} booleans, one per latent"
    return _adam_state_problem(state["optimizer"], list(model.parameters()), values)


def _adam_state_problem(state, parameters, values):
    """Why ``state``, an Adam ``state_dict``, cannot continue ``parameters``, or None."""
    if not isinstance(state, dict) or state.keys() != {"state", "param_groups"}:
        return "the optimizer's state must be a dict of state and param_groups"
    groups = state["param_groups"]
    # Options as a trainer's Adam's (betas, eps, ...); torch supplies those it added since.
    options = _adam([torch.zeros(1)], 0.0).param_groups[0]
    if not (
        isinstance(groups, list | tuple)
        and len(groups) == 1
        and isinstance(group := groups[0], dict)
        and group.get("params") == list(range(len(parameters)))
        and all(
            group[name] == options[name]
            for name in group.keys() & options.keys() - {"lr", "params"}
        )
        and _is_rate(group.get("lr"))
    ):
        return (
            f"the optimizer's param_groups must be one group of the {len(parameters)} "
            "parameters, with a trainer's Adam options"
        )
    moments = state["state"]
    if not isinstance(moments, dict) or not moments.keys() <= set(range(len(parameters))):
        return "the optimizer's state must be a dict of parameter indices"
    for index, entry in moments.items():
        shape, dtype = tuple(parameters[index].shape), parameters[index].dtype
        if not (
            isinstance(entry, dict)
            and entry.keys() == {"step", "exp_avg", "exp_avg_sq"}
            and _is_tensor(entry["step"], (), minimum=0)
            and entry["step"].is_floating_point()
            and _is_tensor(entry["exp_avg"], shape, dtype, values=values)
            and _is_tensor(entry["exp_avg_sq"], shape, dtype, minimum=0, values=values)
        ):
            return (
                f"the optimizer's state of parameter {index} must hold a step count and "
                f"Adam's two moments of its shape {shape} and dtype, finite, the second "
                "non-negative"
            )
    return None


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_rate(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < math.inf


def _is_tensor(value, shape, dtype=None, *, minimum=None, values=True):
    """Whether ``value`` is a tensor of ``shape`` (and ``dtype``) of finite values (at
    least ``minimum``), its values read only if ``values``."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        return False
    if dtype is not None and value.dtype != dtype:
        return False
    if value.dtype == torch.bool or not values:
        return True
    finite = bool(value.isfinite().all()) if value.is_floating_point() else True
    return finite and (minimum is None or bool((value >= minimum).all()))


class HostSnapshot:
    """A host copy of a trainer's state, its model's weights included, that the device
    does not wait for.

    :meth:`capture` queues the copies behind the steps that produced the state. On a
    GPU they go to page-locked buffers allocated at the first capture and reused, so
    training continues while they cross the bus: a model's weights and Adam's moments
    are hundreds of megabytes, which a blocking copy takes several training steps to
    move. :meth:`read` waits for the last capture to land.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.module import SparseAutoencoder
    >>> from sksae._nn.sparsifiers import TopK
    >>> from sksae._nn.training import HostSnapshot, Trainer
    >>> sae = SparseAutoencoder(4, 8, TopK(k=2))
    >>> sae.reset_parameters(torch.Generator().manual_seed(0), b_dec=torch.zeros(4))
    >>> snapshot = HostSnapshot()
    >>> snapshot.capture(Trainer(sae, learning_rate=1e-3))
    >>> state = snapshot.read()
    >>> state["model"]["W_dec"].shape, state["trainer"]["n_steps"]
    (torch.Size([8, 4]), 0)
    """

    def __init__(self):
        self._buffers = []
        self._state = None
        self._landed = None

    def capture(self, trainer):
        """Start copying ``trainer``'s state (and its model's) to the host."""
        state = trainer.full_state()
        # A trainer's state keeps its layout from one capture to the next: the buffers
        # of the last capture are reused in the order tree_map visits the tensors.
        reusable, buffers = iter(self._buffers), []

        def to_host(tensor):
            buffer = next(reusable, None)
            if buffer is None or (buffer.shape, buffer.dtype) != (tensor.shape, tensor.dtype):
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
            buffers.append(buffer)
            return buffer.copy_(tensor.detach(), non_blocking=tensor.is_cuda)

        self._state = tree_map(to_host, state)
        self._buffers = buffers
        device = trainer.model.W_dec.device
        self._landed = None
        if device.type == "cuda":
            self._landed = torch.cuda.Event()
            self._landed.record(torch.cuda.current_stream(device))

    def read(self):
        """The state of the last capture, as nested dicts of host tensors."""
        if self._landed is not None:
            self._landed.synchronize()
        return self._state


def cpu_multiplies_bfloat16():
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX-512 BF16 or AMX).

    Elsewhere torch emulates the products: on an AVX2 CPU a bfloat16 ReLU training step
    at B4096 d512 n4096 took 45 times as long as a float32 one. True when this torch
    cannot tell.

    Examples
    --------
    >>> from sksae._nn.training import cpu_multiplies_bfloat16
    >>> cpu_multiplies_bfloat16() in (True, False)
    True
    """
    probes = ["_is_avx512_bf16_supported", "_is_amx_tile_supported"]
    checks = [getattr(torch.cpu, name) for name in probes if hasattr(torch.cpu, name)]
    return not checks or any(check() for check in checks)


def tree_map(fn, tree, leaf_type=torch.Tensor):
    """Apply ``fn`` to every ``leaf_type`` leaf of nested dicts, lists and tuples.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.training import tree_map
    >>> tree_map(lambda t: t + 1, {"a": [torch.tensor(1)], "b": 2})
    {'a': [tensor(2)], 'b': 2}
    """
    if isinstance(tree, dict):
        return {key: tree_map(fn, value, leaf_type) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, value, leaf_type) for value in tree)
    return fn(tree) if isinstance(tree, leaf_type) else tree


def _firings(code, n_latents):
    """How many rows of the batch each latent fired on, in float64 (no host sync)."""
    dtype = torch.float64
    if code.fired is not None:
        return code.fired.to(dtype)
    active = code.values > 0  # every sparsifier's code is non-negative
    if code.indices is None:
        return count_true(active).to(dtype)
    active = active.to(dtype)
    return torch.zeros(n_latents, dtype=dtype, device=active.device).index_add_(
        0, code.indices.flatten(), active.flatten()
    )


@torch.no_grad()
def _all_finite(tensors):
    """Whether every value of ``tensors`` (a non-empty iterable) is finite, as a tensor
    (no host sync): their extremes, to which NaN propagates, are; twenty times faster
    than ``isfinite().all()`` on the CPU."""
    return torch.cat([torch.stack(torch.aminmax(tensor)) for tensor in tensors]).isfinite().all()


@torch.no_grad()
def _inference_squared_error(model, x):
    """``sum ||x - x_hat||^2`` over the rows ``x`` and the model's inference codes, in
    float64: the squares of tiny float32 data underflow. The copies are of the rows,
    and the encoder's product costs ``n_latents`` times more."""
    x_hat = model.decode(model.encode(x))
    return squared_norm_sum(x.double() - x_hat.double())


@torch.no_grad()
def evaluate_fvu(model, X):
    """Fraction of variance of ``X`` (rows, as in the loop) unexplained by the model's
    inference codes.

    Chunked, so the memory it needs is bounded whatever the size of ``X``.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.module import SparseAutoencoder
    >>> from sksae._nn.sparsifiers import TopK
    >>> from sksae._nn.training import evaluate_fvu
    >>> from sksae._nn.batches import DenseRows
    >>> X = torch.randn(100, 4)
    >>> sae = SparseAutoencoder(4, 8, TopK(k=8))
    >>> sae.reset_parameters(torch.Generator().manual_seed(0), b_dec=X.mean(0))
    >>> 0 <= evaluate_fvu(sae, DenseRows(X)) <= 1
    True
    """
    # The codes ([rows, n_latents]) are the chunk's largest tensors, not its rows; and
    # at least transform's chunks, whose products keep their pace.
    chunk_rows = max(INFERENCE_CHUNK_ROWS, rows_per_chunk(max(model.W_dec.shape)))
    residual = 0.0
    for start in range(0, len(X), chunk_rows):
        residual += _inference_squared_error(model, X.take(slice(start, start + chunk_rows))).item()
    return _fvu(residual / len(X), X)


def _fvu(mean_squared_error, X):
    """``mean_squared_error`` over the variance of the rows ``X``; NaN when they are all
    the same."""
    variance = X.variance()
    return mean_squared_error / variance if variance > 0 else math.nan
