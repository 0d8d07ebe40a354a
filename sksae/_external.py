"""Reading and writing the checkpoints of other sparse-autoencoder libraries.

Three research libraries save sparse autoencoders in their own directory layouts:

- ``"sparsify"`` (EleutherAI): ``cfg.json`` and ``sae.safetensors`` with
  ``encoder.weight`` ``[num_latents, d_in]``, ``encoder.bias``, ``W_dec``
  ``[num_latents, d_in]`` and ``b_dec``; the code is the top ``k`` of
  ``ReLU(encoder(x - b_dec))``.
- ``"saelens"`` (SAELens, v5 and v6 configurations): ``cfg.json`` and
  ``sae_weights.safetensors`` with ``W_enc`` ``[d_in, d_sae]``, ``b_enc``, ``W_dec``
  ``[d_sae, d_in]``, ``b_dec`` and, for JumpReLU, ``threshold`` (or ``log_threshold``).
- ``"dictionary_learning"`` (saprmarks): ``config.json``, whose ``trainer`` entry names
  the ``dict_class``, and ``ae.pt``, a torch state dict whose keys depend on the class.

All three compute ``pre = x W_enc + b_enc`` on ``x`` or on ``x - b_dec``, sparsify it,
and decode ``h W_dec + b_dec``: the model of :class:`SparseAutoencoderTransformer`, up to
the layout of the matrices and where ``b_dec`` enters. :func:`load_external` maps each
checkpoint onto it exactly, so that ``transform`` is the library's encoder and
``inverse_transform`` its decoder; what sksae cannot reproduce exactly is a
``ValueError``, never an approximation, with one exception: a checkpoint the library
computes in float16 or bfloat16 loads with the library's weights exactly and computes in
float32, with a warning (its codes can differ from the library's where a pre-activation
lies within half-precision rounding of a threshold or of the ``k``-th largest).
:func:`export` writes a TopK model in sparsify's layout.

Nothing is unpickled: safetensors files are read with numpy, and ``ae.pt`` with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
"""

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._persistence import (
    _read_json,
    _read_safetensors_with_metadata,
    _safetensors_bytes,
    _write_files_together,
)
from ._transformer import SparseAutoencoderTransformer, _set_weights

__all__ = ["export", "load_external"]

#: The defaults of sparsify's ``SparseCoderConfig``, for fields a ``cfg.json`` omits.
_SPARSIFY_DEFAULTS = {
    "activation": "topk",
    "expansion_factor": 32,
    "normalize_decoder": True,
    "num_latents": 0,
    "k": 32,
    "multi_topk": False,
    "skip_connection": False,
    "transcode": False,
}


#: The dtypes of SAELens's DTYPE_MAP, for ``cfg.json``'s ``dtype`` (with or without
#: ``torch.``).
_SAELENS_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})

#: safetensors dtype codes of half precision, and the torch dtype each names.
_HALF_PRECISION = {"F16": "float16", "BF16": "bfloat16"}

#: Elements of a block of latent rows that ``_estimator`` folds at a time in float64:
#: 16 MB a matrix, whatever the checkpoint's size.
_FOLD_BLOCK_ELEMENTS = 2**21


def load_external(path, format):
    """Load a sparse autoencoder saved by sparsify, SAELens or dictionary_learning.

    The checkpoint becomes a fitted :class:`SparseAutoencoderTransformer` whose
    ``transform`` computes the library's encoder and whose ``inverse_transform`` its
    decoder, up to floating-point rounding. The weight matrices are transposed to sksae's
    ``[n_components, n_features]`` layout; an encoder that does not subtract ``b_dec``
    from its input gets ``W_enc b_dec`` added to its bias instead, which is the same map.
    The model has no training history: ``partial_fit`` trains it further with a fresh
    optimiser. Loading holds about twice the weights' size in memory at its peak (the
    file's bytes beside the arrays read from them, then those beside the estimator's).

    ============================  ============================  ===================
    Checkpoint                    Encoder                       ``activation``
    ============================  ============================  ===================
    sparsify ``topk``             top ``k`` of ReLU             ``"topk"``
    SAELens ``standard``          ReLU                          ``"relu"``
    SAELens ``topk``              top ``k``, then ReLU          ``"topk"``
    SAELens ``jumprelu``          ReLU above ``threshold``      ``"jumprelu"``
    ``AutoEncoder``               ReLU                          ``"relu"``
    ``AutoEncoderNew``            ReLU                          ``"relu"``
    ``AutoEncoderTopK``           top ``k`` of ReLU             ``"topk"``
    ``BatchTopKSAE``              ReLU above one ``threshold``  ``"batchtopk"``
    ``MatryoshkaBatchTopKSAE``    ReLU above one ``threshold``  ``"batchtopk"``
    ``JumpReluAutoEncoder``       ReLU above ``threshold``      ``"jumprelu"``
    ============================  ============================  ===================

    SAELens saves BatchTopK models as JumpReLU ones. A SAELens TopK model trained with
    ``rescale_acts_by_decoder_norm`` has its decoder norms folded into the encoder,
    which gives the same codes. A dictionary_learning ``AutoEncoder`` is rescaled to
    unit-norm decoder columns as its ``load_dictionary`` and ``from_pretrained`` do by
    default: the codes are those of the model it returns. Negative thresholds act as 0,
    as they do in the libraries, whose codes pass through a ReLU.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint's directory.
    format : {"sparsify", "saelens", "dictionary_learning"}
        The library that wrote it.

    Returns
    -------
    estimator : SparseAutoencoderTransformer
        A fitted estimator, in the dtype of the checkpoint: float32 or float64, float32
        for a half-precision one (with a ``UserWarning``).

    Raises
    ------
    ValueError
        If a file or an array is missing, a shape disagrees with the configuration, or
        the checkpoint uses a feature sksae cannot represent exactly: sparsify's
        ``groupmax``, skip connections and transcoders, SAELens's gated SAEs,
        transcoders and input normalisation, dictionary_learning's ``GatedAutoEncoder``.

    See Also
    --------
    export : Write a TopK model in sparsify's format.
    sksae.load : Load a model saved by :func:`sksae.save`.

    Examples
    --------
    >>> import tempfile
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae._external import export, load_external
    >>> from sksae.datasets import make_sparse_superposition
    >>> X = make_sparse_superposition(n_samples=500, n_features=8, n_sources=16,
    ...                               n_active=2, random_state=0)
    >>> sae = SparseAutoencoderTransformer(n_components=32, k=2, max_iter=3,
    ...                                    random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     export(sae, directory)  # a sparsify checkpoint
    ...     loaded = load_external(directory, "sparsify")
    >>> loaded.n_components, loaded.activation, loaded.k, loaded.n_iter_
    (32, 'topk', 2, 0)
    >>> loaded.partial_fit(X).n_iter_
    1
    """
    if format not in _READERS:
        raise ValueError(
            f"format={format!r} is not supported; use one of {', '.join(map(repr, _READERS))}."
        )
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory: a {format} checkpoint is one.")
    return _READERS[format](directory)


def export(model, path, format="sparsify"):
    """Write a fitted TopK sparse autoencoder in sparsify's format.

    The directory (created if needed) receives sparsify's ``cfg.json`` and
    ``sae.safetensors``, in the dtype of the model, which ``SparseCoder.load_from_disk``
    of sparsify and :func:`load_external` read back to the same encoder and decoder.
    Both files are written under temporary names, then renamed together, so an export
    interrupted by Ctrl-C leaves neither a half-written file nor one export's weights
    beside another's configuration. Only the autoencoder is
    written: ``transform_algorithm="pursuit"``, the feature names and the training state
    have no place in sparsify's format.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A model fitted with ``activation="topk"``, whose encoder sparsify computes too.
    path : str or os.PathLike
        Directory to write.
    format : {"sparsify"}, default="sparsify"
        The format to write.

    Raises
    ------
    TypeError
        If ``model`` is not a :class:`SparseAutoencoderTransformer`.
    ValueError
        If ``format`` is not ``"sparsify"``, the model is not fitted
        (:class:`~sklearn.exceptions.NotFittedError`), or its activation is not
        ``"topk"``.

    See Also
    --------
    load_external : Load a checkpoint of sparsify, SAELens or dictionary_learning.

    Examples
    --------
    >>> import json, tempfile
    >>> import numpy as np
    >>> from sksae import SparseAutoencoderTransformer
    >>> from sksae._external import export, load_external
    >>> from sksae.datasets import make_sparse_superposition
    >>> X = make_sparse_superposition(n_samples=500, n_features=8, n_sources=16,
    ...                               n_active=2, random_state=0).astype(np.float32)
    >>> sae = SparseAutoencoderTransformer(n_components=32, k=2, max_iter=3,
    ...                                    random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     export(sae, directory)
    ...     with open(f"{directory}/cfg.json") as f:
    ...         cfg = json.load(f)
    ...     loaded = load_external(directory, "sparsify")
    >>> cfg["d_in"], cfg["num_latents"], cfg["k"], cfg["activation"]
    (8, 32, 2, 'topk')
    >>> bool(np.array_equal(loaded.transform(X), sae.transform(X)))
    True
    """
    if format != "sparsify":
        raise ValueError(f"format={format!r} is not supported; export writes 'sparsify'.")
    if not isinstance(model, SparseAutoencoderTransformer):
        raise TypeError(f"export takes a SparseAutoencoderTransformer, got {type(model).__name__}.")
    check_is_fitted(model)
    # The activation and k of the fit: set_params after it changes neither the encoder
    # nor what must be written.
    fitted = model._fitted_sparsifier_params
    if fitted["activation"] != "topk":
        raise ValueError(
            f"sparsify's encoder is TopK; this model was fitted with "
            f"activation={fitted['activation']!r}, which it cannot express."
        )
    n_latents, n_features = model.components_.shape
    # No input_scale_ to write: fit folds it into the biases (see _fitted_attributes), so
    # the weights already act on X in its own units, as sparsify's will. It only tells
    # partial_fit which units to resume training in.
    cfg = {
        **_SPARSIFY_DEFAULTS,
        # sparsify reads num_latents when it is nonzero; the expansion factor is a label.
        "expansion_factor": max(1, n_latents // n_features),
        "num_latents": n_latents,
        # int: a k from a parameter grid is a numpy integer, which json cannot write.
        "k": int(fitted["k"]),
        "d_in": n_features,
    }
    tensors = {
        "encoder.weight": model.encoder_weights_,
        "encoder.bias": model.encoder_bias_,
        "W_dec": model.components_,
        "b_dec": model.decoder_bias_,
    }
    # Together: new weights beside an earlier export's configuration would load wrong.
    files = {
        "sae.safetensors": _safetensors_bytes(tensors),
        "cfg.json": json.dumps(cfg, indent=1).encode(),
    }
    _write_files_together(path, files)


# ---------------------------------------------------------------------------- sparsify


def _from_sparsify(directory):
    """sparsify's ``SparseCoder``: ``top_k(ReLU(encoder(x - b_dec)))``, decoded by
    ``W_dec``, both ``[num_latents, d_in]`` like sksae's matrices."""
    cfg_file, weights_file = directory / "cfg.json", directory / "sae.safetensors"
    cfg = {**_SPARSIFY_DEFAULTS, **_read_config(cfg_file)}
    for flag, feature in [
        ("skip_connection", "a skip connection (W_skip)"),
        ("transcode", "a transcoder (an encoder of one activation, decoded into another)"),
        ("signed", "a signed SAE (early sparsify versions)"),
    ]:
        if cfg.get(flag):
            raise _unsupported(feature, cfg_file)
    if cfg["activation"] != "topk":
        raise _unsupported(f"activation={cfg['activation']!r}", cfg_file)
    d_in = _positive_int(cfg, "d_in", cfg_file)
    n_latents = _positive_int(cfg, "num_latents", cfg_file, zero_ok=True) or d_in * (
        _positive_int(cfg, "expansion_factor", cfg_file)
    )
    tensors, stored = _read_weights(weights_file)
    weights = _checked(
        tensors,
        {
            "encoder.weight": (n_latents, d_in),
            "encoder.bias": (n_latents,),
            "W_dec": (n_latents, d_in),
            "b_dec": (d_in,),
        },
        weights_file,
        f"d_in={d_in} and {n_latents} latents",
    )
    # sparsify builds its module in the dtype of the file's first tensor, W_dec, and
    # load_state_dict casts the others into it.
    dtype = weights["W_dec"].dtype
    if stored["W_dec"] in _HALF_PRECISION:
        half = _HALF_PRECISION[stored["W_dec"]]
        _warn_half_precision(weights_file, "sparsify", half)
        weights = {name: _rounded_to(array, half) for name, array in weights.items()}
        dtype = np.float32
    return _estimator(
        weights_file,
        dtype=dtype,
        activation="topk",
        k=_positive_int(cfg, "k", cfg_file),
        encoder_weights=weights["encoder.weight"],
        encoder_bias=weights["encoder.bias"],
        components=weights["W_dec"],
        decoder_bias=weights["b_dec"],
    )


# ---------------------------------------------------------------------------- SAELens


def _from_saelens(directory):
    """SAELens: ``pre = (x - b_dec) W_enc + b_enc`` (``x W_enc + b_enc`` without
    ``apply_b_dec_to_input``), ``W_enc`` ``[d_in, d_sae]``, decoded by ``W_dec``
    ``[d_sae, d_in]``. Reads the configurations of v6 (``architecture`` and ``k``) and of
    v5 (``activation_fn_str`` or ``activation_fn``, and ``activation_fn_kwargs``)."""
    cfg_file, weights_file = directory / "cfg.json", directory / "sae_weights.safetensors"
    cfg = _read_config(cfg_file)
    architecture = _string(cfg, "architecture", "standard", cfg_file)
    activation_fn = _string(
        cfg, "activation_fn_str", _string(cfg, "activation_fn", "relu", cfg_file), cfg_file
    )
    if activation_fn == "topk" and architecture in {"standard", "topk"}:
        # v5 wrote TopK models as "standard" ones with a TopK activation function.
        architecture = "topk"
    elif activation_fn != "relu":
        raise _unsupported(f"activation_fn={activation_fn!r}", cfg_file)
    if architecture not in {"standard", "topk", "jumprelu"}:
        raise _unsupported(f"architecture={architecture!r}", cfg_file)
    # v5 wrote a boolean: True meant "expected_average_only_in".
    normalize = cfg.get("normalize_activations") or "none"
    if normalize != "none":
        raise _unsupported(
            f"normalize_activations={normalize!r} (an input normalisation whose scale the "
            "checkpoint does not hold)",
            cfg_file,
        )
    d_in, d_sae = (_positive_int(cfg, key, cfg_file) for key in ("d_in", "d_sae"))
    # SAELens casts the weights to the dtype of its configuration, and computes in it.
    dtype_name = _string(cfg, "dtype", "float32", cfg_file).removeprefix("torch.")
    if dtype_name not in _SAELENS_DTYPES:
        raise ValueError(
            f"{cfg_file}: dtype={cfg['dtype']!r} is none of the dtypes SAELens reads, "
            f"{sorted(_SAELENS_DTYPES)}."
        )
    dtype = np.float64 if dtype_name == "float64" else np.float32
    tensors = {
        name: array.astype(dtype, copy=False)
        for name, array in _read_weights(weights_file)[0].items()
    }
    half_precision = dtype_name in _HALF_PRECISION.values()
    if half_precision:
        _warn_half_precision(weights_file, "SAELens", dtype_name)
        tensors = {name: _rounded_to(array, dtype_name) for name, array in tensors.items()}
    if "log_threshold" in tensors and "threshold" not in tensors:
        # Files of JumpReLU models mid-training: SAELens's threshold is exp(log_threshold),
        # taken in the dtype of its configuration.
        threshold = np.exp(tensors.pop("log_threshold"))
        tensors["threshold"] = _rounded_to(threshold, dtype_name) if half_precision else threshold
    scale = tensors.pop("finetuning_scaling_factor", tensors.pop("scaling_factor", None))
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    weights = _checked(tensors, shapes, weights_file, f"d_in={d_in} and d_sae={d_sae}")
    if scale is not None:
        _check_shape("scaling_factor", scale, (d_sae,), weights_file)
    # v5's fine-tuning scale: SAELens drops one of ones, and refuses one the configuration
    # does not declare.
    if scale is not None and np.allclose(scale, 1):
        scale = None
    if scale is not None and not cfg.get("finetuning_scaling_factor"):
        raise ValueError(
            f"{weights_file} holds a scaling factor, but {cfg_file} does not set "
            "finetuning_scaling_factor."
        )
    rescale = architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm")

    def fold(rows, encoder_weights, encoder_bias, components):
        if scale is not None:
            # v5 decodes (h * scale) W_dec: the scale belongs to the decoder rows.
            components = components * scale[rows, None]
        if rescale:
            # SAELens selects and returns pre * ||W_dec row|| and decodes h / ||W_dec row||:
            # the norms fold into the encoder rows and out of the decoder rows.
            norms = np.linalg.norm(components, axis=1)
            encoder_weights, encoder_bias = encoder_weights * norms[:, None], encoder_bias * norms
            components = components / norms[:, None]
        return encoder_weights, encoder_bias, components

    k = None
    if architecture == "topk":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ValueError(f"{cfg_file}: activation_fn_kwargs={kwargs!r} is not an object.")
        source = cfg if cfg.get("k") is not None else kwargs  # v6's, or v5's
        if source.get("k") is None:
            raise ValueError(f"{cfg_file} describes a TopK SAE but gives no k.")
        k = _positive_int(source, "k", cfg_file)
    return _estimator(
        weights_file,
        dtype=dtype,
        activation={"standard": "relu"}.get(architecture, architecture),
        k=k,
        threshold=weights.get("threshold"),
        encoder_weights=weights["W_enc"].T,
        encoder_bias=weights["b_enc"],
        components=weights["W_dec"],
        decoder_bias=weights["b_dec"],
        subtracts_decoder_bias=cfg.get("apply_b_dec_to_input", True),
        fold=fold,
    )


# ---------------------------------------------------------------------------- dictionary_learning


class _Dictionary(NamedTuple):
    """How a dictionary_learning class lays out its ``ae.pt`` and encodes."""

    #: ``nn.Linear`` layers (``encoder.weight`` ``[dict_size, activation_dim]``,
    #: ``decoder.weight`` ``[activation_dim, dict_size]``) rather than the parameters
    #: ``W_enc`` ``[activation_dim, dict_size]`` and ``W_dec`` ``[dict_size, activation_dim]``.
    linear: bool
    decoder_bias: str
    subtracts_decoder_bias: bool
    activation: str
    #: Further arrays of the state dict: ``k``, ``threshold``, ``group_sizes``.
    extra: tuple = ()


#: The classes ``load_dictionary`` of dictionary_learning loads, but the gated one.
_DICTIONARIES = {
    "AutoEncoder": _Dictionary(True, "bias", True, "relu"),
    "AutoEncoderNew": _Dictionary(True, "decoder.bias", False, "relu"),
    "AutoEncoderTopK": _Dictionary(True, "b_dec", True, "topk", ("k", "threshold")),
    "BatchTopKSAE": _Dictionary(True, "b_dec", True, "batchtopk", ("k", "threshold")),
    "MatryoshkaBatchTopKSAE": _Dictionary(
        False, "b_dec", True, "batchtopk", ("k", "threshold", "group_sizes")
    ),
    # JumpReluAutoEncoder.apply_b_dec_to_input is False unless it was built from SAELens;
    # it is an attribute, not saved in ae.pt.
    "JumpReluAutoEncoder": _Dictionary(False, "b_dec", False, "jumprelu", ("threshold",)),
}


def _from_dictionary_learning(directory):
    """dictionary_learning: the ``ae.pt`` of the ``dict_class`` that ``config.json``
    names, loaded as its ``load_dictionary`` does."""
    config_file, weights_file = directory / "config.json", directory / "ae.pt"
    trainer = _read_config(config_file).get("trainer")
    if not isinstance(trainer, dict):
        raise ValueError(f"{config_file} has no 'trainer' entry: not a dictionary_learning run.")
    if "dict_class" not in trainer:
        raise ValueError(f"{config_file} lacks the entry 'dict_class' in its 'trainer'.")
    dict_class = trainer["dict_class"]
    if not isinstance(dict_class, str) or dict_class not in _DICTIONARIES:
        feature = (
            "a gated SAE (GatedAutoEncoder)"
            if dict_class == "GatedAutoEncoder"
            else f"dict_class={dict_class!r}"
        )
        raise _unsupported(feature, config_file)
    layout = _DICTIONARIES[dict_class]
    d_in = _positive_int(trainer, "activation_dim", config_file)
    n_latents = _positive_int(trainer, "dict_size", config_file)
    if layout.linear:
        encoder, encoder_bias, decoder = "encoder.weight", "encoder.bias", "decoder.weight"
        encoder_shape, decoder_shape = (n_latents, d_in), (d_in, n_latents)
    else:
        encoder, encoder_bias, decoder = "W_enc", "b_enc", "W_dec"
        encoder_shape, decoder_shape = (d_in, n_latents), (n_latents, d_in)
    extra_shapes = {
        "k": (),
        # One threshold for BatchTopK, one per latent for JumpReLU.
        "threshold": (n_latents,) if layout.activation == "jumprelu" else (),
        "group_sizes": None,
    }
    weights = _checked(
        _read_state_dict(weights_file),
        {
            encoder: encoder_shape,
            encoder_bias: (n_latents,),
            decoder: decoder_shape,
            layout.decoder_bias: (d_in,),
            **{name: extra_shapes[name] for name in layout.extra},
        },
        weights_file,
        f"activation_dim={d_in} and dict_size={n_latents}",
    )
    if "group_sizes" in weights:
        _check_group_sizes(weights["group_sizes"], n_latents, weights_file)
    if dict_class == "AutoEncoder":
        _normalize_decoder(weights)
    k = None
    if "k" in weights:
        # As from_pretrained: the configuration's k must be the one saved with the weights.
        stored = weights["k"]
        if stored.dtype.kind not in "iu" or stored.size != 1 or stored.item() < 1:
            raise ValueError(f"{weights_file}: k={stored!r} is not a positive integer.")
        k = stored.item()
        if trainer.get("k", k) != k:
            raise ValueError(f"{config_file} gives k={trainer['k']!r}, but {weights_file} k={k}.")
    return _estimator(
        weights_file,
        # The classes are built in float32, and load_state_dict casts into them.
        dtype=np.float32,
        activation=layout.activation,
        k=k,
        # AutoEncoderTopK keeps a threshold too, but encodes by top k unless asked.
        threshold=None if layout.activation == "topk" else weights.get("threshold"),
        encoder_weights=weights[encoder] if layout.linear else weights[encoder].T,
        encoder_bias=weights[encoder_bias],
        components=weights[decoder].T if layout.linear else weights[decoder],
        decoder_bias=weights[layout.decoder_bias],
        subtracts_decoder_bias=layout.subtracts_decoder_bias,
    )


def _check_group_sizes(group_sizes, n_latents, file):
    """Matryoshka's nested groups: the sizes its constructor asserts (positive, summing
    to ``dict_size``). They shape its training loss alone, not its encoder."""
    if not (
        group_sizes.ndim == 1
        and np.issubdtype(group_sizes.dtype, np.integer)
        and np.all(group_sizes > 0)
        and group_sizes.sum() == n_latents
    ):
        raise ValueError(
            f"{file}: group_sizes={group_sizes.tolist()} are not positive integers summing "
            f"to dict_size={n_latents}."
        )


def _read_state_dict(file):
    """The arrays of a torch state dict, floats in float32, loaded with
    ``weights_only=True``: the file cannot make pickle build arbitrary objects."""
    if not file.is_file():
        raise ValueError(f"{file} is missing.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    # Any error: a corrupted file fails in many places of the unpickler and of torch.
    except Exception as exc:
        raise ValueError(
            f"{file} is not a state dict that torch.load(weights_only=True) can read "
            f"({type(exc).__name__}); sksae never unpickles anything else."
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state.items()
    ):
        raise ValueError(f"{file} is not a state dict (a mapping of names to tensors).")
    for name, tensor in state.items():
        # Sparse, meta, quantized and complex tensors load too, and have no real array
        # to read.
        if (
            tensor.layout != torch.strided
            or tensor.is_meta
            or tensor.is_quantized
            or tensor.is_complex()
        ):
            raise ValueError(
                f"{file}: {name} is a {tensor.layout} {tensor.dtype} tensor on {tensor.device}; "
                "a state dict of SAE weights holds dense real tensors."
            )
    # detach: state_dict(keep_vars=True) saves Parameters, which load_state_dict takes.
    return {
        name: (tensor.to(torch.float32) if tensor.is_floating_point() else tensor).detach().numpy()
        for name, tensor in state.items()
    }


def _normalize_decoder(weights):
    """``AutoEncoder.normalize_decoder``, which ``load_dictionary`` applies: unit-norm
    decoder columns, their norms moved into the encoder rows and bias, each array of
    ``weights`` replaced in turn. The library's torch operations in float32, so that the
    codes are the very ones it computes; out of place, as a state dict's tensors may
    share memory (tied weights, an expanded bias)."""
    norms = torch.norm(torch.from_numpy(weights["decoder.weight"]), dim=0)
    if torch.allclose(norms, torch.ones_like(norms)):
        return
    for name, operation, operand in [
        ("decoder.weight", torch.div, norms),
        ("encoder.weight", torch.mul, norms[:, None]),
        ("encoder.bias", torch.mul, norms),
    ]:
        # One replaced at a time: the checkpoint is held once, plus one matrix.
        weights[name] = operation(torch.from_numpy(weights[name]), operand).numpy()


_READERS = {
    "sparsify": _from_sparsify,
    "saelens": _from_saelens,
    "dictionary_learning": _from_dictionary_learning,
}


# ---------------------------------------------------------------------------- shared


def _estimator(
    source,
    *,
    dtype,
    activation,
    encoder_weights,
    encoder_bias,
    components,
    decoder_bias,
    k=None,
    threshold=None,
    subtracts_decoder_bias=True,
    fold=None,
):
    """The fitted estimator of the given weights, in sksae's layout, and in ``dtype``.

    ``fold(rows, encoder_weights, encoder_bias, components)``, if given, returns a
    library's own folding of the latents ``rows`` (a slice) into the weights it is given,
    in float64. Folding happens in float64 before the cast, so the weights are the
    library's to the rounding of ``dtype``, and a block of rows at a time, so that the
    float64 copies stay small beside a checkpoint of gigabytes.
    """
    n_latents, n_features = components.shape
    decoder_bias = np.asarray(decoder_bias, dtype=np.float64)
    folded = {
        "encoder_weights": np.empty((n_latents, n_features), dtype),
        "encoder_bias": np.empty(n_latents, dtype),
        "components": np.empty((n_latents, n_features), dtype),
    }
    block = max(1, _FOLD_BLOCK_ELEMENTS // n_features)
    for start in range(0, n_latents, block):
        rows = slice(start, start + block)
        block_weights = (
            np.asarray(array[rows], dtype=np.float64)
            for array in (encoder_weights, encoder_bias, components)
        )
        if fold is not None:
            block_weights = fold(rows, *block_weights)
        block_encoder, block_bias, block_components = block_weights
        if not subtracts_decoder_bias:
            # Their pre is W x + b; sksae's is W (x - b_dec) + b', the same for b' = b + W b_dec.
            block_bias = block_bias + block_encoder @ decoder_bias
        for name, values in zip(folded, (block_encoder, block_bias, block_components), strict=True):
            folded[name][rows] = values
    if threshold is not None:
        threshold = np.asarray(threshold, dtype=np.float64)
        if not np.isfinite(threshold).all():
            raise ValueError(f"{source}: the threshold holds NaN or infinite values.")
        # The libraries pass the code through a ReLU: a threshold below 0 lets through
        # what one of 0 does, whereas sksae's pre * (pre > threshold) keeps the negatives.
        threshold = np.maximum(threshold, 0.0)
    params = {"n_components": n_latents, "activation": activation}
    if k is not None:
        params["k"] = k
    try:
        return _set_weights(
            SparseAutoencoderTransformer(**params),
            **folded,
            decoder_bias=decoder_bias.astype(dtype),
            threshold=threshold,
        )
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


def _read_weights(file):
    """The arrays of a safetensors file, read with numpy (see :mod:`sksae._persistence`),
    and the dtype code each was stored in."""
    if not file.is_file():
        raise ValueError(f"{file} is missing.")
    tensors, _, stored = _read_safetensors_with_metadata(file)
    not_float = {
        name: code
        for name, code in stored.items()
        if not np.issubdtype(tensors[name].dtype, np.floating)
    }
    if not_float:
        raise ValueError(f"{file} holds arrays that are not floating point: {not_float}.")
    return tensors, stored


def _warn_half_precision(source, library, dtype_name):
    warnings.warn(
        f"{source}: {library} computes this checkpoint in {dtype_name}; sksae computes it in "
        "float32 from the same weights, so a code can differ from the library's where a "
        f"pre-activation lies within {dtype_name} rounding of a threshold or of the k-th "
        "largest.",
        UserWarning,
        stacklevel=4,
    )


def _rounded_to(array, dtype_name):
    """``array`` rounded to a half-precision dtype, as float32 (which holds it exactly)."""
    half = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(
        getattr(torch, dtype_name)
    )
    return half.to(torch.float32).numpy()


def _read_config(file):
    config = _read_json(file, f"{file} is missing.")
    if not isinstance(config, dict):
        raise ValueError(f"{file} is not a JSON object.")
    return config


def _string(config, key, default, file):
    value = config.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{file}: {key}={value!r} is not a string.")
    return value


def _positive_int(config, key, file, *, zero_ok=False):
    if key not in config:
        raise ValueError(f"{file} lacks the entry {key!r}.")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero_ok else 1):
        raise ValueError(f"{file}: {key}={value!r} is not a positive integer.")
    return value


def _checked(arrays, shapes, file, sizes):
    """``arrays`` if it holds exactly the arrays of ``shapes``, with those shapes (None:
    any). An array sksae does not know would change the library's encoder: it is an
    error, as in ``load_state_dict(strict=True)``."""
    missing = [name for name in shapes if name not in arrays]
    if missing:
        raise ValueError(f"{file} lacks the arrays {missing}; it holds {sorted(arrays)}.")
    unexpected = sorted(set(arrays) - set(shapes))
    if unexpected:
        raise ValueError(
            f"{file} holds arrays sksae does not know how to map: {unexpected}; "
            "loading it without them would not reproduce the library's model."
        )
    for name, shape in shapes.items():
        if shape is not None:
            _check_shape(name, arrays[name], shape, file, sizes)
    return arrays


def _check_shape(name, array, shape, file, sizes=None):
    if array.shape != shape:
        given = f" for {sizes}" if sizes else ""
        raise ValueError(f"{file}: {name} has shape {array.shape}, expected {shape}{given}.")


def _unsupported(feature, file):
    return ValueError(
        f"{file} describes {feature}, which SparseAutoencoderTransformer cannot represent exactly."
    )
