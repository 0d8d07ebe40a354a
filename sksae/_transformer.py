"""SparseAutoencoderTransformer: a sparse autoencoder as a scikit-learn transformer."""

import copy
import dataclasses
import hashlib
import math
import signal
import threading
import warnings
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from sklearn import get_config
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.callback import CallbackSupportMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.extmath import row_norms
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._nn.batches import (
    as_dense,
    is_memory_mapped,
    largest_magnitude,
    map_chunks,
    map_rows,
    rows_per_chunk,
    squared_deviation_sum,
    to_tensor,
    training_rows,
)
from ._nn.modes import own_modes
from ._nn.module import SparseAutoencoder, geometric_median
from ._nn.sparsifiers import SPARSIFIERS, Code
from ._nn.training import (
    AuxK,
    GradientOverflow,
    HostSnapshot,
    Schedule,
    Trainer,
    TrainingDiverged,
    cpu_multiplies_bfloat16,
    evaluate_fvu,
    state_problem,
    tree_map,
)
from ._validation import TORCH_INT_MAX, Integers, Reals

#: The dtypes of fitted models and of their outputs.
_FLOAT_DTYPES = [np.float64, np.float32]
#: Input dtypes kept as they are, in either byte order (big-endian files, FITS or HDF5,
#: stream as memory maps too); any other numeric type becomes float64.
_INPUT_DTYPES = [*_FLOAT_DTYPES, *(np.dtype(dtype).newbyteorder() for dtype in _FLOAT_DTYPES)]
#: scipy.sparse formats taken as they are; others are converted to CSR.
_SPARSE_FORMATS = ("csr", "csc")
#: Rows drawn from the data to place the initial decoder bias at their geometric median:
#: at most this many, and at most about 4 million values.
_MEDIAN_SAMPLE_ROWS = 4096
_MEDIAN_SAMPLE_VALUES = 2**22
#: Fraction of the planned steps of a fit over which ``alpha`` warms up from 0.
_ALPHA_WARMUP_FRACTION = 0.05
#: Fraction of a fit over which the learning rate decays linearly to 0 at its end.
_DECAY_FRACTION = 0.2
#: A new model's last training pass whose FVU exceeds this reconstructed its data worse
#: than their mean by far, and worse than the model started (about 1 at most, with the
#: decoder bias at their median and the encoder's scale fitted): typically at a learning
#: rate too high for the data's scale. A code in which no latent fires has about 1.
_POOR_FIT_FVU = 2.0
#: A model that continues (partial_fit, a warm start) may start anywhere (another
#: library's weights, data that drifted): it fit poorly, above _POOR_FIT_FVU, only if a
#: pass also multiplied by more than this the squared error of rows it started with
#: (EpochStats.first_rows_growth). Wrecked by a learning rate too high, thousands.
_WORSENED_FACTOR = 10.0
#: Largest deviation from 1 of a decoder row norm taken as unit (float32 round-off is
#: about 1e-7).
_UNIT_NORM_TOLERANCE = 1e-4
#: Parameters read by transform, score and their kin, which may change after fit.
_INFERENCE_PARAMS = ("transform_algorithm", "transform_n_candidates", "sparse_output")
#: Attributes the callback machinery manages itself (``_fit_context``'s, and a
#: meta-estimator's such as a Pipeline, which links its context for the fit of each
#: step); a failed fit rolls back everything else.
_CALLBACK_ATTRIBUTES = frozenset(
    {"_callback_fit_ctx", "_skl_callbacks_to_teardown", "_parent_callback_ctx"}
)


class _History(NamedTuple):
    """The training counters a fitted model carries forward: ``loss_curve_``,
    ``n_iter_`` and ``n_samples_seen_``."""

    loss_curve: list
    n_iter: int
    n_samples_seen: int

    def after_pass(self, loss, n_samples):
        """The counters after one more pass (an epoch or a ``partial_fit`` call)."""
        return _History([*self.loss_curve, loss], self.n_iter + 1, self.n_samples_seen + n_samples)


class SparseAutoencoderTransformer(
    CallbackSupportMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Sparse autoencoder (SAE): an overcomplete dictionary with a learned sparse encoder.

    The encoder maps a sample ``x`` to a code ``h``, mostly zeros, and the decoder rebuilds
    ``x`` from it::

        pre = W_enc (x - b_dec) + b_enc
        h = sparsify(pre)
        x_hat = W_dec^T h + b_dec

    ``transform`` returns ``h``; ``inverse_transform`` returns ``x_hat``; the rows of
    ``W_dec`` are the dictionary, :attr:`components_`. Training minimises the squared
    reconstruction error with Adam on minibatches, in PyTorch.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_components : int, default=256
        Number of latents (dictionary atoms). Larger than ``n_features`` for an
        overcomplete dictionary.

    activation : {"topk", "batchtopk", "jumprelu", "relu"}, default="topk"
        How the code is sparsified. The first three keep the decoder rows at unit norm.

        - ``"topk"``: keep the ``k`` largest entries of ``ReLU(pre)`` of each sample
          (Gao et al., 2024). At most ``k`` latents are active per sample.
        - ``"batchtopk"``: in training, keep the ``batch_size * k`` largest entries of
          ``ReLU(pre)`` over the whole minibatch, so samples share the budget by need
          (Bussmann et al., 2024); at inference, keep the entries above
          :attr:`threshold_`, learned as a moving average of the smallest entry kept.
          About ``k`` latents are active per sample on average.
        - ``"jumprelu"``: ``h = pre * H(pre - threshold_)`` with one learned threshold per
          latent and the penalty ``alpha * L0`` (Rajamanoharan et al., 2024), trained
          through straight-through estimators of width ``bandwidth``.
        - ``"relu"``: ``h = ReLU(pre)`` with the penalty ``alpha * sum_i h_i ||W_dec[i]||``
          (Anthropic's April-2024 recipe), the decoder rows unconstrained.

    k : int, default=16
        Number of active latents per sample for ``"topk"`` (at most) and ``"batchtopk"``
        (on average). A ``k`` above ``n_components`` keeps every latent, as
        ``k=n_components`` does, with a warning. Ignored by the other activations.

    alpha : float, default=1.0
        Weight of the sparsity penalty of ``"relu"`` (L1) and ``"jumprelu"`` (L0),
        against the squared reconstruction error summed over features, so a good value
        depends on the scale of ``X``. The default suits inputs with
        ``E||x|| = sqrt(n_features)`` (``normalize_input="mean_norm"``), where it is
        about one feature's worth of variance, and lands both penalties in a sparse code
        (see the user guide). It warms up linearly from 0 over the first 5%
        of the planned steps of ``fit``. Ignored by ``"topk"`` and ``"batchtopk"``.

    bandwidth : float, default=0.001
        Width of the rectangle kernel of ``"jumprelu"``'s straight-through estimators,
        and the initial value of its thresholds before the initial encoder's scale
        (see the user guide) multiplies them; the paper's 0.001 assumes inputs with
        ``E||x|| = sqrt(n_features)``. Ignored by the other activations.

    aux_k : int or None, default=None
        Number of dead latents the AuxK loss uses to reconstruct the residual, for
        ``"topk"`` and ``"batchtopk"``. ``None`` means ``n_features // 2`` (Gao et al.).

    aux_coef : float, default=1/32
        Weight of the AuxK loss (Gao et al., 2024): the latents that have not fired for
        ``dead_steps`` steps are trained to reconstruct what the live ones miss,
        ``aux_coef * ||e - e_hat||^2 / ||e - mean(e)||^2`` with ``e = x - x_hat``, which
        brings dead latents back into use. 0 turns it off. Ignored by ``"relu"`` and
        ``"jumprelu"``, whose penalties keep every latent's gradient alive.

    dead_steps : int, default=256
        A latent that has not fired for this many minibatch steps counts as dead for
        AuxK. The dead latents are looked up every ``dead_steps`` steps.

    batch_size : int, default=256
        Samples per minibatch (the last one of an epoch may be smaller).

    learning_rate : float or None, default=None
        Adam's step size. ``None`` uses ``min(1e-2, 2e-4 / sqrt(n_components / 2**14))``,
        the scaling law Gao et al. (2024) fitted for TopK SAEs, capped for small
        dictionaries.

    learning_rate_warmup_steps : int, default=0
        Minibatch steps over which the learning rate rises linearly from 0 to its value,
        counted from the model's first step (:attr:`n_steps_`), in ``fit`` and
        ``partial_fit`` alike; a warm start continues the count. Off by default: Adam's
        bias correction already keeps the first steps small. It steadies training at
        learning rates above the default, where early steps kill latents
        (``benchmarks/bench_learning_rate_warmup.py``).

    max_grad_norm : float or None, default=None
        Clip the global L2 norm of the gradients (all parameters together) to this
        value before each Adam step. A guard against the occasional huge gradient of
        heavy-tailed data (outlier activations) or a high learning rate; ``None`` does
        not clip.

    max_iter : int, default=200
        Maximum number of epochs (passes over the training data) of ``fit``. The
        learning rate decays linearly to zero over the last 20% of them, unless the fit
        converges first (see ``max_no_improvement``).

    tol : float, default=1e-3
        An epoch improves on the best value so far of the monitored quantity (the mean
        training loss, or the validation FVU with ``early_stopping``) only if it lowers
        it by more than this fraction of it: a relative tolerance, per epoch.

    max_no_improvement : int or None, default=5
        Patience, in epochs. After this many consecutive epochs without improvement
        (see ``tol``), ``fit``
        anneals the learning rate linearly to zero over a cool-down of a quarter as many
        epochs as it has run (at least one), then stops: the same end as a full run,
        reached early. ``None`` always runs ``max_iter`` epochs.

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, score the reconstruction
        of it (FVU) after each epoch, monitor that instead of the training loss (see
        ``tol`` and ``max_no_improvement``), and end with the weights of the epoch that
        scored best.

    validation_fraction : float, default=0.1
        Fraction of the training data held out when ``early_stopping`` is True.

    normalize_input : {"none", "mean_norm"}, default="none"
        ``"mean_norm"`` trains on the data scaled so that ``E||x|| = sqrt(n_features)``,
        the scale the research defaults of ``alpha``, ``bandwidth`` and the learning
        rate assume; the scale comes from the training data of ``fit`` (or the first
        ``partial_fit``). It is folded back into the fitted attributes, so
        ``transform``, ``inverse_transform`` and the attributes are in the units of
        ``X``: the codes are those of the scaled model divided by the scale.

    shuffle : bool, default=True
        Reshuffle the samples before each epoch of ``fit``. ``partial_fit`` never
        shuffles.

    warm_start : bool, default=False
        When the estimator is already fitted, ``fit`` continues instead of starting
        afresh. After a fit that ran to its end, it trains from the weights and
        optimiser state for another ``max_iter`` epochs (a fresh learning-rate schedule
        without warm-ups, the input scale of the first fit). After a fit that was
        interrupted, or a checkpoint saved mid-fit (without ``early_stopping``), it
        resumes that fit where it stopped, on the same ``X`` (checked by its size and a
        digest of 64 of its rows) and with the same training parameters (a change is an
        error; inference parameters, ``verbose`` and ``device`` may change, and
        ``random_state`` is ignored: the interrupted fit's seed goes on), to the end it
        would have reached uninterrupted, bit for bit on the CPU. ``loss_curve_``,
        ``n_iter_``, ``n_steps_`` and ``n_samples_seen_`` keep counting.
        ``n_components``, ``activation``, ``k`` and ``bandwidth`` cannot change.

    partial_fit_samples : int or None, default=None
        The number of samples that ``partial_fit`` calls are planned to train on in all
        (counted by :attr:`n_samples_seen_`), for a stream of chunks to train as ``fit``
        trains. ``None``: ``partial_fit`` trains at a constant learning rate (after
        ``learning_rate_warmup_steps``) with ``alpha`` at full strength. An int:
        ``partial_fit`` follows ``fit``'s schedule laid over that many samples, ``alpha``
        warming up over the first 5% and the learning rate decaying linearly to zero
        over the last 20%, reckoned in samples whatever the sizes of the chunks. For
        ``X`` of ``n`` samples, ``n`` a multiple of ``batch_size``: a first call on all
        of ``X``, then ``E - 1`` passes over it in chunks of multiples of
        ``batch_size``, with ``partial_fit_samples=E * n``, give exactly the model of
        ``fit`` with ``max_iter=E``, ``shuffle=False`` and
        ``max_no_improvement=None``; a model otherwise starts from its first chunk (the
        decoder bias, and with ``normalize_input`` the input scale). Samples past
        the plan in a call train at a learning rate of zero, and a call once the plan is
        used up raises a ``ValueError``. Ignored by ``fit``.

    transform_algorithm : {"encoder", "pursuit"}, default="encoder"
        How ``transform`` (and ``score``, ``score_samples``) code a sample.
        ``"encoder"``: the SAE's own code, one matrix product and the sparsifier, the
        code training optimised. ``"pursuit"`` (``activation="topk"`` only):
        encoder-guided pursuit, which closes much of the amortisation gap, the
        reconstruction error an encoder leaves that the best code of the same sparsity
        over the same dictionary would not. The encoder's ``transform_n_candidates``
        largest pre-activations name each sample's candidate atoms, and a greedy
        non-negative orthogonal matching pursuit picks ``k`` of them, refitting their
        values to the sample by non-negative least squares after each pick. Codes stay
        non-negative with at most ``k`` nonzeros. Training is the same either way; the
        parameter can be changed after ``fit``.

    transform_n_candidates : int or None, default=None
        Candidate atoms per sample for ``transform_algorithm="pursuit"``; more gives
        better codes at a cost that grows with its square. ``None`` means ``4 * k``;
        either is capped at ``n_components``.
        ``k`` refits the values of the encoder's own ``k`` largest pre-activations, the
        cheapest step past the encoder (4 to 5 times its cost in benchmarks).

    sparse_output : bool, default=False
        Return the codes of ``transform`` in scipy.sparse CSR format: a ``csr_matrix``,
        or a ``csr_array`` under ``sklearn.set_config(sparse_interface="sparray")``, as
        :class:`~sklearn.preprocessing.OneHotEncoder` does. They are built chunk by
        chunk from the active latents: no dense ``(n_samples, n_components)`` array is
        ever made, and the codes take ``nnz * (value + index bytes)`` of memory (see
        :func:`sksae.metrics.compression_ratio`). ``inverse_transform`` takes them back.

    device : str, default="cpu"
        Torch device to train and encode on: ``"cpu"``, ``"cuda"``, ``"cuda:1"``… or
        ``"auto"`` (CUDA when available). The fitted attributes are numpy arrays
        whatever the device, so a model fitted on a GPU loads on any machine.

    autocast_dtype : {"bfloat16"} or None, default=None
        Train the encoder's matrix product, and the decoder's where the code is dense
        (forward and backward), in this lower precision, with the weights, the
        optimiser and everything else in the dtype of the data (float32; float64 data
        is never cast). With ``"topk"`` the selection of the ``k`` latents reads the
        low-precision pre-activations, the kept values are cast back up; the other
        activations keep their codes in it. With ``"jumprelu"`` each step
        offsets the thresholds by a different fraction of bfloat16's spacing, without
        which they would learn too low (the pre-activations' spacing near them can
        exceed ``bandwidth``). Worth it
        where the hardware multiplies bfloat16 fast: recent GPUs, and CPUs with
        AVX-512 BF16 or AMX. ``transform`` never uses it: it encodes in the dtype of its
        input.

    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation and the shuffling through a private
        ``torch.Generator``; the global torch RNG is untouched. An int gives a bitwise
        reproducible fit on the CPU.

    verbose : int, default=0
        When positive, print one line per epoch: the mean training loss, FVU, L0,
        fraction of dead latents and, with ``early_stopping``, the validation FVU.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Decoder rows: the dictionary atoms (unit norm but for ``"relu"``).

    encoder_weights_ : ndarray of shape (n_components, n_features)
        Encoder matrix ``W_enc``.

    encoder_bias_ : ndarray of shape (n_components,)
        Encoder bias ``b_enc``.

    decoder_bias_ : ndarray of shape (n_features,)
        Decoder bias ``b_dec``, subtracted before encoding and added back after decoding.
        It starts at the geometric median of the training data.

    input_scale_ : float
        Factor applied to the data for training (``normalize_input``); 1.0 for
        ``"none"``.

    threshold_ : float64 ndarray of shape () or (n_components,)
        Inference threshold of ``"batchtopk"`` (one) or thresholds of ``"jumprelu"``
        (one per latent). Only for those activations.

    feature_density_ : ndarray of shape (n_components,)
        Fraction of the samples of the last epoch (or ``partial_fit`` batch) on which
        each latent fired. Latents at 0 are dead.

    dead_fraction_ : float
        Fraction of latents that never fired in the last epoch (or ``partial_fit``
        batch).

    validation_scores_ : list of float or None
        Explained variance (``1 - FVU``) of the held-out data after each epoch of
        ``fit`` with ``early_stopping``; None otherwise, and after ``partial_fit``.

    best_validation_score_ : float or None
        The best of ``validation_scores_``, whose weights the model holds; None when
        ``validation_scores_`` is.

    loss_curve_ : list of float
        Mean training loss of each epoch (or ``partial_fit`` call): the squared error
        summed over features, plus ``alpha`` times the penalty of ``"relu"`` and
        ``"jumprelu"``. The AuxK loss, which only trains dead latents, is not counted.

    n_iter_ : int
        Number of passes over the data: epochs of ``fit``, plus one per ``partial_fit``.

    n_steps_ : int
        Number of minibatch steps, ``fit`` and ``partial_fit`` together.

    n_samples_seen_ : int
        Number of samples trained on since the model was initialised: each epoch of
        ``fit`` counts its samples, each ``partial_fit`` call those of its ``X``.

    n_features_in_ : int
        Number of features seen during :term:`fit`.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :term:`fit`. Defined only when `X` has feature
        names that are all strings.

    See Also
    --------
    sklearn.decomposition.MiniBatchDictionaryLearning : Dictionary learning with
        sparse codes found by an optimisation per sample rather than an encoder.
    sklearn.neural_network.BernoulliRBM : Restricted Boltzmann machine features.
    sklearn.decomposition.PCA : Dense linear components.

    References
    ----------
    .. [1] Gao, L. et al. "Scaling and evaluating sparse autoencoders." arXiv:2406.04093
       (2024).
    .. [2] Conerly, T. et al. "Circuits Updates - April 2024: Update on how we train SAEs."
       Transformer Circuits Thread (2024).
    .. [3] Bussmann, B., Leask, P. and Nanda, N. "BatchTopK Sparse Autoencoders."
       arXiv:2412.06410 (2024).
    .. [4] Rajamanoharan, S. et al. "Jumping Ahead: Improving Reconstruction Fidelity
       with JumpReLU Sparse Autoencoders." arXiv:2407.14435 (2024).

    Examples
    --------
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae.datasets import make_sparse_superposition
    >>> X = make_sparse_superposition(n_samples=2000, n_features=16, n_sources=32,
    ...                               n_active=3, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=20, random_state=0)
    >>> codes = sae.fit_transform(X)
    >>> codes.shape
    (2000, 64)
    >>> int((codes != 0).sum(axis=1).max())
    3
    >>> round(sae.score(X), 2) > 0.5
    True
    """

    _parameter_constraints: dict = {
        "n_components": [Integers(1, TORCH_INT_MAX)],
        "activation": [StrOptions(set(SPARSIFIERS))],
        "k": [Integers(1)],
        "alpha": [Reals(0, None, closed="left")],
        "bandwidth": [Reals(0, None, closed="neither")],
        "aux_k": [Integers(1), None],
        "aux_coef": [Reals(0, None, closed="left")],
        "dead_steps": [Integers(1, TORCH_INT_MAX)],
        "batch_size": [Integers(1)],
        "learning_rate": [Reals(0, None, closed="neither"), None],
        "learning_rate_warmup_steps": [Integers(0)],
        "max_grad_norm": [Reals(0, None, closed="neither"), None],
        "max_iter": [Integers(1)],
        "tol": [Reals(0, None, closed="left")],
        "max_no_improvement": [Integers(1), None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Reals(0, 1, closed="neither")],
        "normalize_input": [StrOptions({"none", "mean_norm"})],
        "shuffle": ["boolean"],
        "warm_start": ["boolean"],
        "partial_fit_samples": [Integers(1), None],
        "transform_algorithm": [StrOptions({"encoder", "pursuit"})],
        "transform_n_candidates": [Integers(1), None],
        "sparse_output": ["boolean"],
        "device": [str],
        "autocast_dtype": [StrOptions({"bfloat16"}), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }
    #: Parameters that a fit resumed after an interruption may differ in (see
    #: ``_training_params``).
    _params_a_resumed_fit_may_change = frozenset(
        {
            "warm_start",
            "verbose",
            "device",
            "random_state",
            "partial_fit_samples",
            "transform_algorithm",
            "transform_n_candidates",
            "sparse_output",
        }
    )

    def __init__(
        self,
        n_components=256,
        *,
        activation="topk",
        k=16,
        alpha=1.0,
        bandwidth=0.001,
        aux_k=None,
        aux_coef=1 / 32,
        dead_steps=256,
        batch_size=256,
        learning_rate=None,
        learning_rate_warmup_steps=0,
        max_grad_norm=None,
        max_iter=200,
        tol=1e-3,
        max_no_improvement=5,
        early_stopping=False,
        validation_fraction=0.1,
        normalize_input="none",
        shuffle=True,
        warm_start=False,
        partial_fit_samples=None,
        transform_algorithm="encoder",
        transform_n_candidates=None,
        sparse_output=False,
        device="cpu",
        autocast_dtype=None,
        random_state=None,
        verbose=0,
    ):
        self.n_components = n_components
        self.activation = activation
        self.k = k
        self.alpha = alpha
        self.bandwidth = bandwidth
        self.aux_k = aux_k
        self.aux_coef = aux_coef
        self.dead_steps = dead_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_warmup_steps = learning_rate_warmup_steps
        self.max_grad_norm = max_grad_norm
        self.max_iter = max_iter
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.normalize_input = normalize_input
        self.shuffle = shuffle
        self.warm_start = warm_start
        self.partial_fit_samples = partial_fit_samples
        self.transform_algorithm = transform_algorithm
        self.transform_n_candidates = transform_n_candidates
        self.sparse_output = sparse_output
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the autoencoder on ``X`` from a fresh initialisation (or, with
        ``warm_start``, from the fitted model).

        An interruption (``KeyboardInterrupt``, Ctrl-C) is raised again, after the
        estimator takes the state of the last completed epoch: its weights, optimiser
        state, ``n_iter_`` and the progress of the fit (its random generator, schedule
        and plateau counter). ``fit`` with ``warm_start=True`` on the same ``X``, with the
        same training parameters, resumes from there and ends with the model the
        uninterrupted fit would have given (bit for bit on the CPU; without
        ``early_stopping``, whose best-so-far weights are not kept). A checkpoint the
        fit's callbacks save mid-fit (see :func:`sksae.save`) resumes alike after
        loading. A Ctrl-C while the fit records an epoch (its validation score, the host
        copy of its weights) or sets the fitted attributes takes effect once they are
        written. Interrupted within the first epoch, the estimator keeps the state it had
        before the call. Any other error leaves it as it was before the call, too.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data, float32 or float64 (other numeric types become float64).
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        warm = self.warm_start and hasattr(self, "components_")
        resumed = self.__dict__.get("_fit_progress") if warm else None
        with _rollback_on_error(self), own_modes(training=True):
            X, dtype = self._validate_training_data(X, new_model=not warm)
            self._check_sparsifier_params()
            device = self._torch_device()
            self._warn_of_emulated_autocast(device, dtype)
            if resumed is not None:
                self._check_resumable(resumed, X, dtype)
            seed = _seed(self.random_state) if resumed is None else resumed["seed"]
            generator = torch.Generator().manual_seed(seed)
            if warm:
                self._check_same_model_shape()
                scale = self.input_scale_
            else:
                scale = self._input_scale(X, dtype)
                # The epochs' fitted_estimator (sklearn's callbacks) is a copy of this
                # estimator with the epoch's attributes set: a threshold_ of the last fit
                # would outlive a refit whose activation has none.
                self.__dict__.pop("threshold_", None)
            X_fit, X_val = self._split_validation(_scaled(X, scale, dtype), generator)
            planned_steps = self.max_iter * math.ceil(X_fit.shape[0] / self.batch_size)
            if resumed is not None:
                trainer = self._resumed_trainer(device)
                schedule = dict(resumed["schedule"])
                # Checkpoints saved before the warm-up could start mid-stream name its end so.
                schedule.setdefault("alpha_warmup_end", schedule.pop("alpha_warmup_steps", 0))
                trainer.schedule = Schedule(**schedule)
                history, progress = self._history(), resumed
                if resumed["generator"] is not None:
                    generator.set_state(torch.from_numpy(resumed["generator"].copy()))
            else:
                if warm:
                    trainer = self._resumed_trainer(device)
                    history = self._history()
                else:
                    model = self._new_model(X_fit, generator, device, dtype)
                    trainer = self._new_trainer(model, None)
                    history = _History([], 0, 0)
                trainer.schedule = self._planned_schedule(
                    trainer, trainer.n_steps, planned_steps, warm_up_alpha=not warm
                )
                progress = {
                    "seed": seed,
                    "epoch": 0,
                    "plateau": (math.inf, 0),
                    "data_digest": _data_digest(X, dtype),
                }
            interrupted = self._run_epochs(
                X,
                X_fit,
                X_val,
                scale,
                trainer,
                generator if self.shuffle else None,
                history,
                progress,
                new_model=not warm,
            )
        if interrupted:
            raise KeyboardInterrupt
        return self

    def _training_params(self):
        """The parameters that shape training, which a resumed fit must keep: all but
        those of inference and reporting, ``warm_start``, the device and the seed (kept
        in the fit's progress)."""
        return {
            name: value
            for name, value in self.get_params().items()
            if name not in self._params_a_resumed_fit_may_change
        }

    def _check_resumable(self, resumed, X, dtype):
        """Refuse to resume the interrupted fit ``resumed`` (``_fit_progress``) on other
        data (``X``, trained in ``dtype``) or with other training parameters: it would not
        end as the fit it resumes."""
        interrupted = f"This estimator holds a fit interrupted after epoch {resumed['epoch']}"
        if X.shape[0] != resumed["n_samples"]:
            raise ValueError(
                f"{interrupted} on {resumed['n_samples']} samples, which warm_start resumes: "
                f"it needs the same X, got {X.shape[0]} samples. To train anew, set "
                "warm_start=False."
            )
        # Fits interrupted before sksae kept a digest of their data resume unchecked.
        digest = resumed.get("data_digest")
        if digest is not None and digest != _data_digest(X, dtype):
            raise ValueError(
                f"{interrupted}, which warm_start resumes on the same X; this X has other "
                "values or another order of rows (in the rows the fit keeps a digest of). "
                "To train anew, set warm_start=False."
            )
        # Fits interrupted before sksae kept their parameters resume unchecked.
        ran_with = resumed.get("params") or self._training_params()
        current = self._training_params()
        changed = _changes(
            current, ran_with, [name for name in current if name in ran_with], "it ran with"
        )
        if changed:
            raise ValueError(
                f"{interrupted}, which warm_start resumes with the parameters it ran with; "
                f"got {', '.join(changed)}. Set them back, or set warm_start=False to train "
                "anew."
            )

    def _validate_training_data(self, X, *, new_model):
        """``(X, dtype)``: ``X`` validated for training, in the ``dtype`` of the model it
        trains (float32 or float64 as ``X`` is for a new model, the fitted one's for a
        model that continues).

        A memory map is left as it is, its batches cast one at a time: a cast of it whole
        would be the copy it exists to avoid.
        """
        X = validate_data(
            self, X, accept_sparse=_SPARSE_FORMATS, dtype=_INPUT_DTYPES, reset=new_model
        )
        dtype = X.dtype.newbyteorder("=") if new_model else self.components_.dtype
        X, largest = _check_magnitude(X, "X", dtype)
        self._check_squares_are_normal(largest, dtype, new_model=new_model)
        return (X if is_memory_mapped(X) else X.astype(dtype, copy=False)), dtype

    def _check_squares_are_normal(self, largest, dtype, *, new_model):
        """Refuse training data whose largest value ``largest``, in the units training
        sees, squares below the smallest normal number of ``dtype``: the squared errors
        would underflow to a loss of 0, or of a few digits, whatever the fit."""
        if new_model and self.normalize_input == "mean_norm":
            return  # scaled to norms of sqrt(n_features)
        scale = self.input_scale_ if not new_model else 1.0
        smallest_normal = np.finfo(dtype).tiny
        if not 0 < largest * scale < math.sqrt(smallest_normal):
            return
        if new_model:
            wider = ", or pass it as float64" if dtype.itemsize < 8 else ""
            advice = f"set normalize_input='mean_norm' or scale the data{wider}"
        else:
            advice = (
                f"the model trained on data of another scale (input_scale_={scale:.3g}): "
                "pass data on the scale of its first fit, or fit a new model"
            )
        raise ValueError(
            f"X holds values up to {largest * scale:.3g} in magnitude, in the units of "
            f"training, whose squares are below the smallest normal {np.dtype(dtype)} "
            f"({smallest_normal:.3g}): the squared reconstruction errors of training "
            f"would underflow; {advice}."
        )

    def _split_validation(self, X, generator):
        """``(X_fit, X_val)``: a random ``validation_fraction`` held out for early
        stopping, or ``(X, None)``."""
        if not self.early_stopping:
            return X, None
        n_samples = X.shape[0]
        n_validation = math.ceil(self.validation_fraction * n_samples)
        if n_validation >= n_samples:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} of {n_samples} samples "
                "leaves none to train on; pass more samples or set early_stopping=False."
            )
        if n_validation < 2:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} of {n_samples} samples "
                "holds out 1 sample, which has no variance for early stopping's FVU to "
                "explain; raise validation_fraction, pass more samples or set "
                "early_stopping=False."
            )
        order = torch.randperm(n_samples, generator=generator).numpy()
        return X[np.sort(order[n_validation:])], X[np.sort(order[:n_validation])]

    def _run_epochs(
        self, X, X_fit, X_val, scale, trainer, generator, history, progress, *, new_model
    ):
        """Epochs until ``max_iter``, a callback's stop, or the end of the cool-down.

        Training runs on ``X_fit`` (and validation on ``X_val``, or ``None``), in the
        units of ``normalize_input``; callbacks see the user's ``X``. When the monitored
        quantity (the validation FVU with ``early_stopping``, else the training loss)
        reaches a plateau after the warm-ups (of ``alpha`` and of the learning rate), the
        learning rate anneals linearly to zero over a cool-down of a quarter as many
        epochs as were run (at least one), then the fit ends. ``history`` is the
        :class:`_History` to continue (the fitted model's for a warm start).
        ``progress`` is where this fit starts: its seed, the epochs it has already run
        and its plateau counter (``_fit_progress`` of an interrupted fit, which each
        epoch records). ``new_model``: whether this fit initialised the model, whose
        outcome is then judged on the data alone (:meth:`_warn_of_a_poor_fit`).

        Returns whether a ``KeyboardInterrupt`` ended the fit after at least one epoch:
        the estimator then holds the last completed epoch. One within the first epoch
        propagates. A Ctrl-C while an epoch's record or the fitted attributes are
        written is held until they are whole: the epoch then counts as completed.
        """
        device, dtype = trainer.model.W_dec.device, trainer.model.W_dec.dtype
        X_rows = training_rows(X_fit, device, dtype)
        X_val_rows = None if X_val is None else training_rows(X_val, device, dtype)
        steps_per_epoch = math.ceil(X_fit.shape[0] / self.batch_size)
        first_epoch = progress["epoch"]
        fit_ctx = self._init_callback_context(max_subtasks=max(self.max_iter - first_epoch, 0))
        fit_ctx.call_on_fit_task_begin(estimator=self, X=X)
        validation_scores, last_epoch, best_stats, best_score = [], None, None, None
        growth = 0.0  # the largest first_rows_growth of the passes
        # Host copies of the latest epoch's state and of the best-validated one.
        snapshot, best = HostSnapshot(), HostSnapshot()
        plateau = _Plateau(self.tol, self.max_no_improvement)
        plateau.best, plateau.epochs_without_improvement = progress["plateau"]
        interrupted = False
        for epoch in range(first_epoch, self.max_iter):
            epoch_ctx = fit_ctx.subcontext(task_name="epoch")
            try:
                epoch_ctx.call_on_fit_task_begin(estimator=self, X=X)
                stats = self._train_pass(trainer, X_rows, generator)
                growth = max(growth, stats.first_rows_growth)
            except KeyboardInterrupt:
                if last_epoch is None:
                    raise
                interrupted = True
                break
            # The epoch's record (the host copies last_epoch reads) is written whole: a
            # Ctrl-C meanwhile ends the fit after it, this epoch kept.
            with _interrupts_held() as held:
                history = history.after_pass(stats.loss, X_fit.shape[0])
                monitored = stats.loss
                if X_val_rows is not None:
                    monitored = evaluate_fvu(trainer.model, X_val_rows)
                    validation_scores.append(1.0 - monitored)
                    # The first epoch is the best so far even if its score is NaN (held-out
                    # rows all equal: no variance to explain).
                    if best_score is None or validation_scores[-1] > best_score:
                        best.capture(trainer)
                        best_stats, best_score = stats, validation_scores[-1]
                if self.verbose:
                    self._print_epoch(epoch, stats, validation_scores)
                # While alpha warms up the loss rises with it, and while the learning rate does
                # its progress is no guide: no plateau can be judged yet.
                warming_up = trainer.schedule.warming_up(trainer.n_steps)
                cooling = trainer.schedule.decaying(trainer.n_steps)
                if not warming_up and plateau.reached(monitored) and not cooling:
                    cool_down_epochs = math.ceil(
                        _DECAY_FRACTION / (1 - _DECAY_FRACTION) * (epoch + 1)
                    )
                    trainer.schedule.decay_over(trainer.n_steps, cool_down_epochs * steps_per_epoch)
                snapshot.capture(trainer)
                finished = epoch + 1 == self.max_iter or trainer.schedule.finished(trainer.n_steps)
                # What resuming after this epoch needs; early stopping's best-so-far weights
                # are not kept, so its fits do not resume, nor does a fit after its last epoch.
                resume_from = None
                if X_val_rows is None and not finished:
                    resume_from = {
                        "seed": progress["seed"],
                        "n_samples": X_fit.shape[0],
                        "epoch": epoch + 1,
                        "generator": None if generator is None else generator.get_state().numpy(),
                        "schedule": dataclasses.asdict(trainer.schedule),
                        "plateau": (plateau.best, plateau.epochs_without_improvement),
                        "params": self._training_params(),
                        "data_digest": progress.get("data_digest"),  # None: before sksae kept one
                    }
                last_epoch = partial(
                    self._epoch_attributes,
                    X,
                    snapshot,
                    stats,
                    history,
                    list(validation_scores),
                    (best, best_stats, best_score) if X_val_rows is not None else None,
                    scale,
                    resume_from,
                )
            if held.signalled:
                interrupted = True
                break
            try:
                # Evaluated by the callbacks only if one asks for a fitted estimator.
                stop = epoch_ctx.call_on_fit_task_end(
                    estimator=self, X=X, reconstruction_attributes=last_epoch
                )
            except KeyboardInterrupt:
                interrupted = True
                break
            if stop or finished:
                break
        with _interrupts_held() as held:
            if last_epoch is not None:
                self.__dict__.update(last_epoch())
            else:
                # A resumed fit with no epoch left to run (a checkpoint of a fit's last
                # epoch, which earlier versions wrote with progress to resume): the
                # derived attributes follow its parameters all the same.
                self.__dict__.update(self._derived_attributes(X))
            if not interrupted:
                # The fit ran to its end (or a callback ended it): a warm start trains
                # anew.
                self._fit_progress = None
            fit_ctx.call_on_fit_task_end(estimator=self, X=X, reconstruction_attributes={})
        interrupted = interrupted or held.signalled
        if last_epoch is not None and not interrupted:
            growth = None if new_model else growth
            self._warn_of_a_poor_fit(stats, X, stacklevel=5, growth=growth)  # fit's caller
        return interrupted

    def _epoch_attributes(
        self, X, snapshot, stats, history, validation_scores, best, scale, progress
    ):
        """The fitted attributes of an epoch of ``fit`` on ``X`` from its
        :class:`HostSnapshot`, with the weights of the best-validated epoch (``best``: its
        snapshot, stats and score) under early stopping, the ``progress`` a resumed fit
        starts from, and the attributes derived from the model on ``X``."""
        attributes = self._fitted_attributes(snapshot.read(), stats, history, scale)
        attributes["_fit_progress"] = progress
        if best is not None:
            best_snapshot, best_stats, best_score = best
            attributes.update(
                self._model_attributes(best_snapshot.read()["model"], best_stats, scale)
            )
            attributes["validation_scores_"] = validation_scores
            attributes["best_validation_score_"] = best_score
        epoch = copy.copy(self)
        epoch.__dict__.update(attributes)
        attributes.update(epoch._derived_attributes(X))
        return attributes

    def _print_epoch(self, epoch, stats, validation_scores):
        validation = (
            f", validation FVU {1 - validation_scores[-1]:.4f}" if validation_scores else ""
        )
        print(
            f"[{type(self).__name__}] epoch {epoch + 1}: loss {stats.loss:.5g}, "
            f"FVU {stats.fvu:.4f}, L0 {stats.l0:.2f}, "
            f"dead {np.mean(stats.feature_density.numpy() == 0):.1%}{validation}"
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Train on one batch of data: one pass over ``X`` in minibatches, in order.

        The first call initialises the model from ``X`` (decoder bias at its geometric
        median); later calls continue it, Adam's moments and the dead-latent clocks
        included. The learning rate is constant (after ``learning_rate_warmup_steps``)
        and ``alpha`` at full strength, unless ``partial_fit_samples`` plans the calls'
        schedule. Parameters that fix the shape of the model or its encoder
        (``n_components``, ``activation``, ``k``, ``bandwidth``) cannot change between
        calls.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The estimator, updated.
        """
        first_call = not hasattr(self, "components_")
        with _rollback_on_error(self), own_modes(training=True):
            # _fit_context validates parameters on the first call only.
            self._validate_params()
            X, dtype = self._validate_training_data(X, new_model=first_call)
            self._check_sparsifier_params()
            device = self._torch_device()
            self._warn_of_emulated_autocast(device, dtype)
            if first_call:
                history = _History([], 0, 0)
                scale = self._input_scale(X, dtype)
                generator = torch.Generator().manual_seed(_seed(self.random_state))
                model = self._new_model(_scaled(X, scale, dtype), generator, device, dtype)
                trainer = self._new_trainer(model, None)
            else:
                history = self._history()
                self._check_partial_fit_plan(history.n_samples_seen)
                self._check_same_model_shape()
                trainer = self._resumed_trainer(device)
                scale = self.input_scale_
            trainer.schedule = self._partial_fit_schedule(trainer, history.n_samples_seen)
            rows = training_rows(_scaled(X, scale, dtype), device, trainer.model.W_dec.dtype)
            stats = self._train_pass(trainer, rows, None)
            history = history.after_pass(stats.loss, X.shape[0])
            # One read: a HostSnapshot's page-locked buffers pay off only when reused.
            state = trainer.full_state()
            self.__dict__.update(self._fitted_attributes(state, stats, history, scale))
            self.__dict__.update(self._derived_attributes(X))
            growth = None if first_call else stats.first_rows_growth
            self._warn_of_a_poor_fit(stats, X, stacklevel=4, growth=growth)  # partial_fit's caller
        return self

    def _history(self):
        """The fitted model's training counters, to continue."""
        # Models saved before sksae counted samples start counting from here.
        n_samples_seen = self.__dict__.get("n_samples_seen_", 0)
        return _History(list(self.loss_curve_), self.n_iter_, n_samples_seen)

    def _check_partial_fit_plan(self, n_samples_seen):
        if self.partial_fit_samples is not None and n_samples_seen >= self.partial_fit_samples:
            raise ValueError(
                f"partial_fit_samples={self.partial_fit_samples} are used up: the model has "
                f"trained on n_samples_seen_={n_samples_seen} samples, and its learning "
                "rate has decayed to zero. Raise partial_fit_samples to train on, or set it "
                "to None for a constant learning rate."
            )

    def _partial_fit_schedule(self, trainer, n_samples_seen):
        """The schedule of a ``partial_fit`` call: constant without
        ``partial_fit_samples``, else ``fit``'s laid over that many samples.

        The plan is reckoned in samples, at ``batch_size`` a step, from where the model
        stands (``n_samples_seen``, ``trainer.n_steps``), so that calls on chunks of any
        size follow one schedule, and passes over data of a multiple of ``batch_size``
        samples take the very steps of ``fit``.
        """
        if self.partial_fit_samples is None:
            return Schedule(learning_rate_warmup_steps=self.learning_rate_warmup_steps)
        # The step of sample 0 of the plan: the model is ahead of full batches by its
        # partial ones (0 when every step was a full batch).
        start = trainer.n_steps - n_samples_seen / self.batch_size
        planned_steps = self.partial_fit_samples / self.batch_size
        return self._planned_schedule(trainer, start, planned_steps, warm_up_alpha=True)

    def _planned_schedule(self, trainer, start, planned_steps, *, warm_up_alpha):
        """``fit``'s schedule over ``planned_steps`` steps from step ``start`` (which a
        stream may put between steps): ``alpha`` warms up over the first 5% of them,
        if ``warm_up_alpha`` and the sparsifier is penalised, and the learning rate
        decays linearly to zero over the last 20%, after the warm-up of
        ``learning_rate_warmup_steps`` (counted from the model's first step)."""
        penalised = trainer.model.sparsifier.penalised and self.alpha > 0
        warm_up_end = start + _ALPHA_WARMUP_FRACTION * planned_steps
        decay_start = math.floor(start + (1 - _DECAY_FRACTION) * planned_steps)
        return Schedule(
            alpha_warmup_start=start,
            alpha_warmup_end=math.ceil(warm_up_end) if warm_up_alpha and penalised else 0,
            decay_start=decay_start,
            decay_steps=math.ceil(start + planned_steps) - decay_start,
            learning_rate_warmup_steps=self.learning_rate_warmup_steps,
        )

    def _derived_attributes(self, X):
        """Hook for subclasses: fitted attributes computed from the model this estimator
        holds and its validated training data ``X`` (an outlier detector's threshold),
        at the end of ``partial_fit`` and of each epoch of ``fit``."""
        return {}

    def _resumed_trainer(self, device):
        """A trainer of the fitted model that continues its optimiser state.

        A model built from weights alone (another library's checkpoint) has no optimiser
        state yet: Adam starts afresh from its weights. Where its activation keeps the
        decoder rows at unit norm and they are not, their norms are folded into the
        encoder first (the same model), or, where the activation cannot follow (TopK's
        selection), rescaled with a warning that this changes the codes.
        """
        state = self.__dict__.get("_trainer_state")
        model = self._module(device, training=True)
        if state is not None:
            state = tree_map(lambda a: torch.from_numpy(a.copy()), state, np.ndarray)
        elif model.sparsifier.unit_norm_decoder:
            norms = np.linalg.norm(self.components_, axis=1)
            if np.abs(norms - 1).max() > _UNIT_NORM_TOLERANCE and not model.fold_decoder_norms_():
                warnings.warn(
                    "Training keeps the decoder rows at unit norm, as activation="
                    f"{self._fitted_sparsifier_params['activation']!r} requires, and these "
                    f"weights' rows have norms from {norms.min():.3g} to {norms.max():.3g}: "
                    "training rescales them first, which changes the codes.",
                    UserWarning,
                    stacklevel=4,  # the caller of fit or partial_fit, through _fit_context
                )
                # Before the first step, whose gradient projection assumes unit rows.
                model.normalize_decoder()
        return self._new_trainer(model, None, state)

    def _trainer_state_problem(self, state):
        """Why ``state`` (a saved ``_trainer_state``) cannot continue training the fitted
        model, or None where it can; read without a copy of the model's weights."""
        n_latents, n_features = self.components_.shape
        sparsifier = _make_sparsifier(self._fitted_sparsifier_params)
        dtype = getattr(torch, self.components_.dtype.name)
        model = SparseAutoencoder(n_features, n_latents, sparsifier, dtype=dtype, device="meta")
        with warnings.catch_warnings():
            # Read-only arrays (a loaded file's) are only read.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return state_problem(tree_map(torch.from_numpy, state, np.ndarray), model)

    def _warn_of_emulated_autocast(self, device, dtype):
        """Warn where ``autocast_dtype`` would slow training down: on a CPU that emulates
        bfloat16 products (float64 models, which autocast leaves alone, aside)."""
        if (
            self.autocast_dtype is not None
            and device.type == "cpu"
            and dtype != np.float64
            and not cpu_multiplies_bfloat16()
        ):
            warnings.warn(
                f"autocast_dtype={self.autocast_dtype!r} on a CPU without bfloat16 matrix "
                "products in hardware (AVX-512 BF16 or AMX): torch emulates them, many "
                "times slower than float32 (a ReLU step 45 times on an AVX2 CPU). Leave "
                "autocast_dtype=None on this machine.",
                UserWarning,
                stacklevel=4,  # the caller of fit or partial_fit, through _fit_context
            )

    def _warn_of_a_poor_fit(self, stats, X, stacklevel, growth=None):
        """Warn when the last training pass (its :class:`EpochStats`) reconstructed the
        training data ``X`` worse than their mean by far, over the pass or after its last
        step, with the likely cause (see :data:`_POOR_FIT_FVU`); for a model that
        continues, only if ``growth``, the largest ``first_rows_growth`` of the call's
        passes, shows that the call made it so (see :data:`_WORSENED_FACTOR`)."""
        # A NaN FVU (constant data) is no sign.
        fvu = max((value for value in [stats.fvu, stats.last_step_fvu] if value > 0), default=0)
        if not fvu > _POOR_FIT_FVU:
            return
        worsened = ""
        if growth is not None:
            if not growth > _WORSENED_FACTOR:
                return
            worsened = f"; a pass multiplied the error of rows it started with by {growth:.3g}"
        if self.normalize_input == "none" and growth is None:
            advice = (
                f"the rows of X have a mean norm of {_mean_row_norm(X):.3g}, where the "
                f"defaults assume about sqrt(n_features) = {math.sqrt(X.shape[1]):.3g}: "
                "set normalize_input='mean_norm', or scale the data"
            )
        else:
            advice = "lower it"
        warnings.warn(
            f"{type(self).__name__} reconstructs its training data worse than their mean "
            f"does (a training FVU of {fvu:.3g}, over its last pass or after its last step"
            f"{worsened}). "
            f"The learning_rate ({self._learning_rate():.3g}) is likely too high for this "
            f"data; {advice}.",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )

    def _new_trainer(self, model, schedule, state=None):
        auxk = None
        if self.aux_coef > 0:
            n_features = model.W_dec.shape[1]
            aux_k = max(1, n_features // 2) if self.aux_k is None else self.aux_k
            auxk = AuxK(k=aux_k, coef=self.aux_coef, dead_steps=self.dead_steps)
        return Trainer(
            model,
            learning_rate=self._learning_rate(),
            alpha=self.alpha,
            schedule=schedule,
            auxk=auxk,
            state=state,
            max_grad_norm=self.max_grad_norm,
            autocast_dtype=None
            if self.autocast_dtype is None
            else getattr(torch, self.autocast_dtype),
        )

    def _train_pass(self, trainer, rows, generator):
        try:
            return trainer.run_epoch(rows, self.batch_size, generator=generator)
        except GradientOverflow as exc:
            raise ValueError(
                f"Training failed: {exc}, which freezes the weights it reaches. The data, "
                "or alpha, are too large for this dtype whatever the learning rate: set "
                "normalize_input='mean_norm' or scale the data, lower alpha, or pass "
                "float64 data."
            ) from exc
        except TrainingDiverged as exc:
            raise ValueError(
                f"Training diverged: {exc}. The learning_rate "
                f"({self._learning_rate():.3g}) is most likely too high for this data; "
                "lower it, or scale the data (e.g. with StandardScaler)."
            ) from exc

    def _fitted_attributes(self, state, stats, history, scale):
        """The fitted attributes of this estimator, in numpy, from a trainer's ``state``
        (:meth:`Trainer.full_state`, or a :meth:`HostSnapshot.read` of it) and the
        training counters (a :class:`_History`).

        The trainer works on ``X * scale`` (see ``normalize_input``). The attributes
        describe the same model on ``X`` itself: dividing the biases and thresholds by
        ``scale`` divides every pre-activation, hence every code, by ``scale``, which the
        unchanged decoder turns back into the user's units.
        """
        return {
            **self._model_attributes(state["model"], stats, scale),
            "input_scale_": scale,
            "loss_curve_": list(history.loss_curve),
            "n_iter_": history.n_iter,
            "n_samples_seen_": history.n_samples_seen,
            "n_steps_": state["trainer"]["n_steps"],
            "_fitted_sparsifier_params": self._sparsifier_params(),
            "_trainer_state": tree_map(_to_numpy, state["trainer"]),
            # Set by fit to resume it; partial_fit's passes are each complete.
            "_fit_progress": None,
            # Set by fit under early stopping; partial_fit holds out nothing.
            "validation_scores_": None,
            "best_validation_score_": None,
        }

    def _model_attributes(self, model_state, stats, scale):
        """The weights, thresholds and firing statistics of a model's ``state_dict``.

        With a ``scale`` other than 1, the scaled attributes in training units are kept
        too (``_training_units``): multiplying the user's units back by ``scale`` may
        differ from them in the last bit, and a resumed fit must continue bit for bit.
        """
        in_training_units = {
            "encoder_bias_": _to_numpy(model_state["b_enc"]),
            "decoder_bias_": _to_numpy(model_state["b_dec"]),
        }
        if "sparsifier.threshold" in model_state:
            in_training_units["threshold_"] = _to_numpy(model_state["sparsifier.threshold"])
        return {
            "components_": _to_numpy(model_state["W_dec"]),
            "encoder_weights_": _to_numpy(model_state["W_enc"]),
            # np.asarray: a 0-d array divided by a float is a numpy scalar, not an array.
            **{name: np.asarray(value / scale) for name, value in in_training_units.items()},
            "feature_density_": stats.feature_density.numpy(),
            "dead_fraction_": float(np.mean(stats.feature_density.numpy() == 0)),
            "_training_units": None if scale == 1.0 else in_training_units,
        }

    # ------------------------------------------------------------------ model construction

    def _sparsifier_params(self):
        """The sparsifier's constructor arguments; kept at fit so set_params cannot change
        the encoder of a fitted model."""
        if self.activation in {"topk", "batchtopk"}:
            return {"activation": self.activation, "k": min(self.k, self.n_components)}
        if self.activation == "jumprelu":
            return {
                "activation": "jumprelu",
                "n_latents": self.n_components,
                "bandwidth": self.bandwidth,
            }
        return {"activation": self.activation}

    def _check_sparsifier_params(self):
        params = self._sparsifier_params()
        if "k" in params and params["k"] < self.k:
            # As SelectKBest does with more features asked than there are: scikit-learn's
            # common checks set n_components=1, and a grid over k and n_components meets
            # such pairs.
            warnings.warn(
                f"k={self.k} is greater than n_components={self.n_components}: every "
                "latent is kept, as with k=n_components (a dense code).",
                UserWarning,
                stacklevel=4,  # the caller of fit or partial_fit, through _fit_context
            )
        self._check_transform_params(self.activation, params.get("k", 0))

    def _check_transform_params(self, activation, k):
        if self.transform_algorithm != "pursuit":
            return
        if activation != "topk":
            raise ValueError(
                "transform_algorithm='pursuit' needs activation='topk', whose codes have "
                f"a fixed number of nonzeros; got activation={activation!r}."
            )
        if self.transform_n_candidates is not None and self.transform_n_candidates < k:
            raise ValueError(
                f"transform_n_candidates={self.transform_n_candidates} must be at least "
                f"k={k}: pursuit picks k atoms among the candidates."
            )

    def _model_shape_changes(self):
        """``"name=value (fitted: old value)"`` for each parameter that fixes the fitted
        model's shape or its encoder and has changed since: none may, for it to continue."""
        fitted = {"n_components": self.components_.shape[0], **self._fitted_sparsifier_params}
        current = {"n_components": self.n_components, **self._sparsifier_params()}
        names = [name for name in {**fitted, **current} if name != "n_latents"]
        if current["activation"] != fitted["activation"]:
            # The other sparsifier parameters are each activation's own: that one has a
            # k and the other none is no change of the user's.
            names = ["n_components", "activation"]
        return _changes(current, fitted, names, "fitted:")

    def _check_same_model_shape(self):
        """Refuse to continue the fitted model after a change of a parameter that fixes
        its shape or its encoder, naming the parameters changed."""
        changed = self._model_shape_changes()
        if changed:
            raise ValueError(
                "n_components, activation, k and bandwidth cannot change between "
                f"partial_fit calls or into a warm start; got {', '.join(changed)}. Call fit "
                "(warm_start=False) to train a new model."
            )

    def _new_model(self, X, generator, device, dtype):
        torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
        model = SparseAutoencoder(
            X.shape[1],
            self.n_components,
            _make_sparsifier(self._sparsifier_params()).to(device),
            dtype=torch_dtype,
            device=device,
        )
        n_rows = min(_MEDIAN_SAMPLE_ROWS, rows_per_chunk(X.shape[1], _MEDIAN_SAMPLE_VALUES))
        rows = torch.randperm(X.shape[0], generator=generator)[:n_rows]
        sample = to_tensor(as_dense(X[np.sort(rows.numpy())]), "cpu", torch_dtype)
        model.reset_parameters(generator, b_dec=geometric_median(sample))
        model.scale_encoder_(sample)
        return model

    def _module(self, device, *, dtype=None, training=False):
        """The torch module of the fitted state, its weights in ``dtype`` (default: fitted).

        When ``training``, the module works on copies: training must never write into
        the fitted arrays, as a failed call rolls back to them.
        """
        dtype = np.dtype(self.components_.dtype if dtype is None else dtype).newbyteorder("=")
        scale = self.input_scale_ if training else 1.0
        kept = self.__dict__.get("_training_units") or {}

        def convert(name, dtype=dtype, scaled=False):
            array = getattr(self, name)
            if scaled and scale != 1.0:
                # Training resumes in the units it ran in (see _model_attributes), from
                # the copy kept in them while it still matches the attribute.
                unscaled = kept.get(name)
                same = unscaled is not None and np.array_equal(unscaled / scale, array)
                array = unscaled if same else array * scale
            with np.errstate(over="ignore"):
                converted = array.astype(dtype, copy=training)
            # Only a narrower dtype can overflow: the weights as fitted are finite.
            if converted.dtype.itemsize < array.dtype.itemsize and not np.isfinite(converted).all():
                raise ValueError(
                    f"This model's {name} reaches {np.abs(array).max():.3g}, beyond the "
                    f"range of {dtype}, the dtype of the data passed: pass it as "
                    f"{array.dtype}."
                )
            return to_tensor(converted, device)

        state = {}
        if hasattr(self, "threshold_"):
            state["threshold"] = convert("threshold_", self.threshold_.dtype, scaled=True)
        sparsifier = _make_sparsifier(self._fitted_sparsifier_params, **state)
        return SparseAutoencoder.from_tensors(
            sparsifier.to(device),
            W_enc=convert("encoder_weights_"),
            b_enc=convert("encoder_bias_", scaled=True),
            W_dec=convert("components_"),
            b_dec=convert("decoder_bias_", scaled=True),
            requires_grad=training,
        )

    def _input_scale(self, X, dtype):
        """The factor ``normalize_input`` applies to the training data (1.0 for none),
        which trains in ``dtype``."""
        if self.normalize_input == "none":
            return 1.0
        mean_norm = _mean_row_norm(X)
        if mean_norm == 0:
            return 1.0
        scale = math.sqrt(X.shape[1]) / mean_norm
        if scale > float(np.finfo(dtype).max):
            raise ValueError(
                f"normalize_input='mean_norm' would scale X by {scale:.3g}, beyond the "
                f"range of {np.dtype(dtype)}: the rows of X have a mean norm of "
                f"{mean_norm:.3g}. Pass X as float64, or scale it first."
            )
        return scale

    def _learning_rate(self):
        if self.learning_rate is not None:
            return self.learning_rate
        return min(1e-2, 2e-4 / math.sqrt(self.n_components / 2**14))

    def _torch_device(self, *, cpu_without_gpu=False):
        """The torch device ``device`` names; with ``cpu_without_gpu``, the CPU in place
        of a CUDA device on a machine without one (a model fitted on a GPU still encodes
        there)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(
                f"device={self.device!r} is not a torch device; use 'cpu', 'cuda', "
                "'cuda:<index>' or 'auto'."
            ) from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            if cpu_without_gpu:
                return torch.device("cpu")
            raise ValueError(
                f"device={self.device!r} was requested, but torch sees no CUDA GPU on "
                "this machine; use device='cpu' or device='auto'."
            )
        if device.type not in {"cpu", "cuda"}:
            raise ValueError(f"device={self.device!r} is not supported; use 'cpu' or 'cuda'.")
        return device

    # ------------------------------------------------------------------ inference

    def _map_rows(self, fn, X):
        """``fn(model, rows)`` over ``X`` in chunks, the model in the dtype of ``X``."""
        device = self._torch_device(cpu_without_gpu=True)
        model = self._module(device, dtype=X.dtype)
        with own_modes(training=False):
            return map_rows(lambda chunk: fn(model, chunk), X, device=device)

    def _validate_input(self, X):
        return self._validate_input_and_largest(X)[0]

    def _validate_input_and_largest(self, X):
        """``X`` validated as :meth:`transform` takes it, and its largest magnitude, which
        the validation reads anyway: for a scale, without a second pass over ``X``."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=_SPARSE_FORMATS, dtype=_INPUT_DTYPES, reset=False)
        return _check_magnitude(X, "X")

    def transform(self, X):
        """Encode ``X`` as sparse codes.

        Each row is encoded on its own: the result for a sample does not depend on the
        other samples passed with it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data to encode.

        Returns
        -------
        codes : {ndarray, sparse matrix} of shape (n_samples, n_components)
            Sparse codes (mostly zeros), in the dtype of ``X`` (float32 or float64); a
            CSR matrix (or array, see ``sparse_output``) when ``sparse_output`` is True.
        """
        return self._transform_validated(self._validate_input(X))

    def _transform_validated(self, X):
        """:meth:`transform` of ``X`` already validated (numpy or scipy.sparse)."""
        encode = self._encoder()
        device = self._torch_device(cpu_without_gpu=True)
        model = self._module(device, dtype=X.dtype)
        with own_modes(training=False):
            chunk_codes = map_chunks(partial(encode, model), X, device=device)
            if not self.sparse_output:
                return _dense_codes(chunk_codes, X.shape[0], model.n_latents, model.W_enc.dtype)
            chunks = [
                _code_to_csr(code, stop - start, model.n_latents)
                for start, stop, code in chunk_codes
            ]
        codes = sp.vstack(chunks, format="csr")
        codes.sort_indices()
        # scikit-learn's sparse outputs follow its sparse_interface configuration.
        return codes if get_config()["sparse_interface"] == "sparray" else sp.csr_matrix(codes)

    def inverse_transform(self, X):
        """Reconstruct data from codes: ``X @ components_ + decoder_bias_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_components)
            Codes, for example from :meth:`transform`.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
            Reconstructed data, in the dtype of ``X`` (float32 or float64).
        """
        check_is_fitted(self)
        codes = check_array(X, accept_sparse=_SPARSE_FORMATS, dtype=_INPUT_DTYPES)
        if codes.shape[1] != self.components_.shape[0]:
            raise ValueError(
                f"X has {codes.shape[1]} features, but inverse_transform expects codes "
                f"with n_components={self.components_.shape[0]} columns."
            )
        X_hat = self._map_rows(lambda model, h: model.decode(Code(h)), codes)
        # Nothing is squared here: codes as large as transform gives for the largest
        # data it accepts reconstruct it; only larger ones can overflow.
        if not np.isfinite(X_hat).all():
            largest = float(abs(codes).max())
            if math.isnan(largest):  # where scikit-learn's assume_finite skipped its check
                raise ValueError("Input X contains NaN.")
            raise ValueError(
                f"The reconstruction of these codes overflows {X_hat.dtype}: they hold "
                f"values up to {largest:.3g} in magnitude."
            )
        return X_hat

    def score_samples(self, X):
        """Minus the squared reconstruction error of each sample.

        Higher is better. It is the natural anomaly score: samples unlike the training
        data reconstruct badly. It is in the squared units of ``X``, so scale features
        that should count equally to a common scale first.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            ``-||x - x_hat||^2`` for each sample, in float64 whatever the dtype of ``X``
            (as scikit-learn's outlier detectors give): the squares of float32 errors
            below about 1e-19 would underflow in float32.
        """
        return -self._squared_errors(self._validate_input(X))

    def score(self, X, y=None):
        """Explained variance of the reconstruction, ``1 - FVU``.

        ``FVU = sum ||x - x_hat||^2 / sum ||x - mean(X)||^2``, so 1 is a perfect
        reconstruction and 0 is no better than the mean sample. This is what
        :class:`~sklearn.model_selection.GridSearchCV` maximises when no ``scoring`` is
        given: it favours the most faithful reconstruction, which grows with ``k`` and
        ``n_components`` and shrinks with ``alpha``; compare sparsity settings with a
        downstream score instead.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        score : float
        """
        X, largest = self._validate_input_and_largest(X)
        # Both sums in units of the largest value of X, whose ratio is the same: the
        # squares of tiny values underflow (float32 values below about 1e-19).
        scale = largest or 1.0
        residual = self._squared_errors(X, scale).sum()
        total = squared_deviation_sum(X, scale=scale)
        return float(1.0 - residual / total) if total > 0 else float(residual == 0)

    def _squared_errors(self, X, scale=1.0):
        """``||x - x_hat||^2`` for each row of ``X``, in float64 (the squares of float32
        errors below about 1e-19 underflow in float32) and in units of ``scale``, where
        tiny errors do not underflow nor huge ones overflow."""
        encode = self._encoder()

        def squared_error(model, x):
            residual = (x - model.decode(encode(model, x))).double()
            return (residual if scale == 1.0 else residual / scale).square().sum(dim=1)

        return self._map_rows(squared_error, X)

    def _encoder(self):
        """``encode(model, x)``: the code of a chunk of rows by ``transform_algorithm``."""
        self._check_inference_params()
        if self.transform_algorithm == "encoder":
            return lambda model, x: model.encode(x)
        n_candidates = self._n_candidates()
        return lambda model, x: model.pursue(x, n_candidates)

    def _check_inference_params(self):
        """Check the parameters of inference, which may change after fit, against the
        fitted model: at each use."""
        validate_parameter_constraints(
            {name: self._parameter_constraints[name] for name in _INFERENCE_PARAMS},
            {name: getattr(self, name) for name in _INFERENCE_PARAMS},
            caller_name=type(self).__name__,
        )
        fitted = self._fitted_sparsifier_params
        self._check_transform_params(fitted["activation"], fitted.get("k", 0))

    def _n_candidates(self):
        """The atoms ``"pursuit"`` weighs per sample: ``transform_n_candidates``, or
        ``4 * k``, at most ``n_components``."""
        k = self._fitted_sparsifier_params.get("k", 0)
        return min(self.transform_n_candidates or 4 * k, self.components_.shape[0])

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.sparse = True
        return tags


def _set_weights(
    estimator, *, encoder_weights, encoder_bias, components, decoder_bias, threshold=None
):
    """Make the unfitted ``estimator`` a fitted model with the given weights.

    For weights trained elsewhere (another library's checkpoint): the parameters that
    fix the encoder (``n_components``, ``activation``, ``k``, ``bandwidth``) must already
    be set. There is no training history: ``n_iter_`` is 0 and the firing statistics,
    unknown, are NaN. ``partial_fit`` continues training with a fresh optimiser. Arrays
    already in the weights' common floating dtype become the estimator's own, uncopied
    (a large checkpoint's weights are not held twice).
    """
    estimator._validate_params()
    if estimator.activation in {"topk", "batchtopk"} and estimator.k > estimator.n_components:
        raise ValueError(
            f"k={estimator.k} must be at most n_components={estimator.n_components}: a "
            "checkpoint's TopK code cannot keep more latents than its dictionary has."
        )
    estimator._check_sparsifier_params()
    weights = {
        "components_": components,
        "encoder_weights_": encoder_weights,
        "encoder_bias_": encoder_bias,
        "decoder_bias_": decoder_bias,
    }
    dtype = np.result_type(*weights.values())
    dtype = dtype if dtype in _FLOAT_DTYPES else np.float64
    weights = {name: np.asarray(value, dtype=dtype) for name, value in weights.items()}
    n_latents, n_features = weights["components_"].shape
    expected = {
        "components_": (n_latents, n_features),
        "encoder_weights_": (n_latents, n_features),
        "encoder_bias_": (n_latents,),
        "decoder_bias_": (n_features,),
    }
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {weights[name].shape}.")
        if not np.isfinite(weights[name]).all():
            raise ValueError(f"{name} holds NaN or infinite values.")
    if n_latents != estimator.n_components:
        raise ValueError(
            f"The weights have {n_latents} latents but n_components={estimator.n_components}."
        )
    if threshold is not None:
        weights["threshold_"] = np.array(threshold, dtype=np.float64)
    estimator.__dict__.update(
        weights,
        n_features_in_=n_features,
        input_scale_=1.0,
        feature_density_=np.full(n_latents, np.nan),
        dead_fraction_=math.nan,
        validation_scores_=None,
        best_validation_score_=None,
        loss_curve_=[],
        n_iter_=0,
        n_steps_=0,
        n_samples_seen_=0,
        _fitted_sparsifier_params=estimator._sparsifier_params(),
    )
    return estimator


def _check_magnitude(X, name, dtype=None):
    """Refuse values whose squares, summed over a row, would overflow ``dtype`` (default:
    that of ``X``); return ``X`` and its largest magnitude.

    Finite but huge inputs would otherwise turn into infinite losses, codes or scores
    deep inside the computation. The bound leaves a factor of 1000 of headroom.
    """
    if sp.issparse(X) and not X.has_canonical_format:
        # max and min would sum the duplicates of the caller's matrix in place; the copy
        # is the validated X, whose duplicates later steps may sum too.
        X = X.copy()
    largest = largest_magnitude(X)
    if math.isnan(largest):
        # Where scikit-learn's assume_finite skipped its check: found at no cost, which
        # training would report as a divergence, and transform as NaN codes.
        raise ValueError(f"Input {name} contains NaN.")
    dtype = np.dtype(X.dtype if dtype is None else dtype).newbyteorder("=")
    bound = math.sqrt(np.finfo(dtype).max / (1e3 * X.shape[1]))
    if largest > bound:
        raise ValueError(
            f"{name} holds values up to {largest:.3g} in magnitude, beyond what {dtype} "
            f"arithmetic on {X.shape[1]} features can square and sum ({bound:.3g}); scale "
            "the data first (for example with StandardScaler)."
        )
    return X, largest


#: Rows of X, spread evenly over it, whose digest a fit keeps to resume on its own X.
_DIGEST_ROWS = 64


def _data_digest(X, dtype):
    """The SHA-256 digest of X's shape and of :data:`_DIGEST_ROWS` of its rows, in the
    ``dtype`` training casts them to: a check, cheap for a memory map too, that a
    resumed fit has the X it ran on (whatever holds it)."""
    rows = np.unique(np.linspace(0, X.shape[0] - 1, _DIGEST_ROWS).astype(np.int64))
    sample = np.ascontiguousarray(as_dense(X[rows]), dtype=dtype)
    digest = hashlib.sha256(repr(X.shape).encode())
    digest.update(sample)  # its buffer: no copy of the rows
    return digest.hexdigest()


def _mean_row_norm(X):
    """The mean Euclidean norm of the rows of ``X`` (dense or scipy.sparse)."""
    # In float64 and in units of the largest value, a chunk at a time: the squares of
    # float32 values below about 1e-19 underflow (at 1e-25 every norm came out 0), and
    # those of float64 values below about 1e-154. Dense chunks: sparse rows are summed
    # in another order, and a fit on a sparse X would not be its dense twin's.
    scale = largest_magnitude(X) or 1.0
    chunk_rows = rows_per_chunk(X.shape[1])
    norm_sum = sum(
        row_norms(as_dense(X[start : start + chunk_rows]).astype(np.float64) / scale).sum()
        for start in range(0, X.shape[0], chunk_rows)
    )
    return float(norm_sum / X.shape[0] * scale)


def _make_sparsifier(params, **state):
    params = dict(params)
    return SPARSIFIERS[params.pop("activation")](**params, **state)


def _scaled(array, scale, dtype):
    """``array * scale`` in ``dtype`` (cast, then scaled, as the batches of an unscaled
    memory map are), without a copy when the scale is 1."""
    return array if scale == 1.0 else array.astype(dtype, copy=False) * scale


def _seed(random_state):
    """The seed of the private torch generator of a fit."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _to_numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


class _Plateau:
    """Counts epochs in which a value (lower is better) fails to improve by ``tol``.

    :meth:`reached` is true once, at the ``patience``-th such epoch in a row (never
    when ``patience`` is None).
    """

    def __init__(self, tol, patience):
        self.tol, self.patience = tol, patience
        self.best, self.epochs_without_improvement = math.inf, 0

    def reached(self, value):
        if value < self.best * (1.0 - self.tol):
            self.best, self.epochs_without_improvement = value, 0
        else:
            self.epochs_without_improvement += 1
        return self.epochs_without_improvement == self.patience


def _changes(current, before, names, before_is):
    """``"name=value (<before_is> old value)"`` for each of ``names`` whose value in the
    dict ``current`` differs from that in ``before`` (a missing name reads as ``None``)."""
    return [
        f"{name}={current.get(name)!r} ({before_is} {before.get(name)!r})"
        for name in names
        if current.get(name) != before.get(name)
    ]


def _dense_codes(chunk_codes, n_rows, n_latents, dtype):
    """The dense ``[n_rows, n_latents]`` numpy array, in the torch ``dtype``, of the
    :class:`Code` of each chunk of rows (``(start, stop, code)``), each sparse code
    scattered straight into it: a dense ``[chunk, n_latents]`` tensor per chunk, then
    copied, made a TopK transform of 100,000 x 512 rows into 4096 latents take about 15%
    longer.

    The array is torch's, zeroed on every thread: numpy asks the system for huge pages
    for an array this size, whose first writes can stall while the system compacts its
    memory to find them (where ``/sys/kernel/mm/transparent_hugepage/defrag`` says
    ``madvise``, a common default); the same transform took 1.12 to 1.92 times a bare
    ``addmm`` + ``topk`` into a numpy array, 1.17 to 1.31 times into torch's.
    """
    codes = torch.zeros((n_rows, n_latents), dtype=dtype).numpy()
    for start, stop, code in chunk_codes:
        rows = torch.from_numpy(codes[start:stop])
        values = code.values[: stop - start].cpu()
        if code.indices is None:
            rows.copy_(values)
        else:
            rows.scatter_(1, code.indices[: stop - start].cpu(), values)
    return codes


def _code_to_csr(code, n_rows, n_latents):
    """The first ``n_rows`` rows of a :class:`Code` as a CSR array, zeros dropped."""
    values = code.values[:n_rows].cpu().numpy()
    if code.indices is None:
        return sp.csr_array(values)
    indices = code.indices[:n_rows].cpu().numpy()
    active = values != 0
    indptr = np.concatenate([[0], np.cumsum(active.sum(axis=1))])
    return sp.csr_array((values[active], indices[active], indptr), shape=(n_rows, n_latents))


@contextmanager
def _interrupts_held():
    """Hold Ctrl-C (SIGINT) until the block ends, for state that must be written whole.

    Yields a namespace whose ``signalled`` tells, after the block, whether one came. Only
    the main thread receives signals, and only under Python's own SIGINT handler does one
    raise ``KeyboardInterrupt``: elsewhere there is nothing to hold.
    """
    record = SimpleNamespace(signalled=False)
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield record
        return

    def hold(signum, frame):
        record.signalled = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield record
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def _rollback_on_error(estimator):
    """Restore the estimator's attributes if the block raises: no half-fitted state.

    Fitted attributes are only ever replaced, never written in place, so a shallow copy
    of ``__dict__`` is a faithful snapshot.
    """
    saved = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        callback_state = {
            key: value for key, value in estimator.__dict__.items() if key in _CALLBACK_ATTRIBUTES
        }
        # In the saved order too: a pickle or a saved configuration of the estimator is
        # then byte for byte the one before.
        estimator.__dict__.clear()
        estimator.__dict__.update(
            {key: value for key, value in saved.items() if key not in _CALLBACK_ATTRIBUTES}
        )
        estimator.__dict__.update(callback_state)
        raise
