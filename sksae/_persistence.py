"""Saving and loading fitted estimators without pickle.

A saved model is a directory of two files: ``model.safetensors`` holds every array of the
fitted state (weights, statistics, the optimiser's moments), ``config.json`` the class
name, the parameters, the sksae version, the rest of the fitted state with a typed
reference to each array, and the SHA-256 digest of the weights file, so that a damaged or
altered weights file is refused rather than loaded with wrong weights. Neither file can
run code when read: the safetensors format is a JSON header followed by raw little-endian
bytes, which this module reads and writes itself with numpy (the files open with the
``safetensors`` library too), and the JSON names the class among a fixed set."""

import dataclasses
import hashlib
import json
import math
import os
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ._nn.training import Schedule
from ._outlier import SparseAutoencoderOutlierDetector
from ._transformer import (
    _CALLBACK_ATTRIBUTES,
    _FLOAT_DTYPES,
    SparseAutoencoderTransformer,
    _interrupts_held,
    _make_sparsifier,
)
from ._validation import is_int, is_real

__all__ = ["load", "save"]

#: Version of the layout of ``config.json``; bumped when it changes incompatibly.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: The classes a file may name: loading never imports anything the file asks for.
CLASSES = {
    cls.__name__: cls for cls in [SparseAutoencoderTransformer, SparseAutoencoderOutlierDetector]
}
#: Attributes never saved: the callbacks set on the estimator and their fit contexts.
_UNSAVED = frozenset({"_skl_callbacks", *_CALLBACK_ATTRIBUTES})
#: safetensors dtype codes of the numpy dtypes a fitted state holds.
DTYPE_CODES = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("bool"): "BOOL",
    np.dtype("uint8"): "U8",
}
#: What each code is read as: bfloat16 (research checkpoints) becomes float32; the other
#: integers are for data files, which may hold any numeric array a .npy file can.
DTYPES = {
    **{code: dtype for dtype, code in DTYPE_CODES.items()},
    "BF16": np.dtype("<u2"),
    "I8": np.dtype("int8"),
    "I16": np.dtype("int16"),
    "U16": np.dtype("uint16"),
    "U32": np.dtype("uint32"),
    "U64": np.dtype("uint64"),
}
#: Upper bound of a safetensors header: a corrupted length must not allocate gigabytes.
MAX_HEADER_BYTES = 100 * 2**20
#: What json.loads raises for bytes that are no JSON it can read: RecursionError for
#: arrays or objects nested deeper than the interpreter's stack.
JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, RecursionError)


def save(estimator, path):
    """Save a fitted sksae estimator to the directory ``path``, without pickle.

    The directory (created if needed) receives ``model.safetensors``, every array of the
    fitted state, and ``config.json``, the class, its parameters, the sksae version and
    the other fitted attributes. Both files are written under temporary names, then
    renamed together with Ctrl-C held: a save interrupted by Ctrl-C leaves the directory
    as it was or with both files new, never one of each.
    :func:`load` reads it back bitwise. A ``random_state`` that is not an int or None
    is saved as None: it only seeded the fit. Parameters or fitted attributes that load
    would refuse (set by hand: ``set_params`` validates nothing) are an error, before
    anything is written.

    Parameters
    ----------
    estimator : SparseAutoencoderTransformer or SparseAutoencoderOutlierDetector
        A fitted estimator.
    path : str or os.PathLike
        Directory to write.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import sksae
    >>> from sksae.datasets import make_sparse_superposition
    >>> X = make_sparse_superposition(n_samples=500, n_features=8, n_sources=16,
    ...                               n_active=2, random_state=0)
    >>> sae = sksae.SparseAutoencoderTransformer(n_components=32, k=2, max_iter=3,
    ...                                          random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     sksae.save(sae, directory)
    ...     loaded = sksae.load(directory)
    >>> bool(np.array_equal(loaded.transform(X), sae.transform(X)))
    True
    """
    if type(estimator).__name__ not in CLASSES or type(estimator) is not CLASSES.get(
        type(estimator).__name__
    ):
        raise TypeError(
            f"save takes a fitted {' or '.join(CLASSES)}, got {type(estimator).__name__}."
        )
    if not hasattr(estimator, "components_"):
        raise ValueError(f"This {type(estimator).__name__} is not fitted yet: nothing to save.")
    # What load would refuse is not written: set_params and setattr validate nothing.
    estimator._validate_params()
    described = f"the {type(estimator).__name__} to save"
    _check_state_names(dict(_fitted_state(estimator)), _STATE_OF[type(estimator)], described)
    _check_fitted_state(estimator, described)
    params = {name: _json_param(name, value) for name, value in estimator.get_params().items()}
    tensors = {}
    state = {name: _encode(value, name, tensors) for name, value in _fitted_state(estimator)}
    config = {
        "format": "sksae",
        "format_version": FORMAT_VERSION,
        "sksae_version": _sksae_version(),
        "class": type(estimator).__name__,
        "params": params,
        "state": state,
    }
    # Each file vouches for the other: the weights carry the digest of the configuration,
    # the configuration the digest of the weights.
    weights = _safetensors_bytes(tensors, {"config_sha256": _config_digest(config)})
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    # allow_nan=False: the bare NaN and Infinity that json writes by default are not JSON,
    # and other readers refuse them (_encode tags non-finite numbers instead).
    config_json = json.dumps(config, indent=1, allow_nan=False)
    # The weights of one save beside the configuration of another would match neither's
    # digest: load would refuse both.
    _write_files_together(path, {WEIGHTS_FILE: weights, CONFIG_FILE: config_json.encode()})


def _write_files_together(directory, files):
    """Write ``files`` (name -> bytes) into ``directory`` (created if needed), each under
    a temporary name, then rename them all with Ctrl-C held: a Ctrl-C leaves the
    directory as it was or with every file new, never some of each (a failed rename, a
    killed process or a power cut can, and the files' digests then refuse the pair).

    A Ctrl-C held is raised once the renames are done. A write that fails removes the
    temporary files it wrote: after a full disk, a file the size of the weights.
    """
    directory = writable_directory(directory)
    temporaries = {name: directory / f"{name}.tmp" for name in files}
    try:
        for name, data in files.items():
            temporaries[name].write_bytes(data)
    except BaseException:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
        raise
    with _interrupts_held() as held:
        for name, temporary in temporaries.items():
            os.replace(temporary, directory / name)
    if held.signalled:
        raise KeyboardInterrupt


def writable_directory(path):
    """``path`` as a directory, created if needed; a ``ValueError`` where a file is."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a directory.")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _json_param(name, value):
    """A valid parameter's value as JSON holds it: numpy scalars (a grid built with
    ``np.arange``, say) become Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if name == "random_state" and not (value is None or isinstance(value, int)):
        return None  # a RandomState instance only seeded the fit
    return value


def load(path):
    """Load an estimator written by :func:`save`.

    Nothing in the files is executed: the class must be one of sksae's estimators, each
    file must match the digest the other records of it, every array must have the dtype
    and shape its JSON reference records, and the fitted state must be one that a fit
    gives: the attributes save writes and no others, weights that fit together (shapes,
    float32 or float64, finite values), the activation's parameters and thresholds
    fitting the weights, and a training state that continues them (Adam's moments of
    their shapes, the progress of an interrupted fit); anything else is a ``ValueError``
    that says what is wrong.

    Parameters
    ----------
    path : str or os.PathLike
        Directory written by :func:`save`.

    Returns
    -------
    estimator : SparseAutoencoderTransformer or SparseAutoencoderOutlierDetector
        The fitted estimator, identical to the one saved.

    Examples
    --------
    See :func:`save`.
    """
    directory = Path(path)
    config_file = directory / CONFIG_FILE
    config = _read_json(
        config_file, f"{directory} holds no {CONFIG_FILE}: not a saved sksae model."
    )
    cls = _check_config(config, directory)
    weights_sha256 = config.pop("weights_sha256")
    tensors, metadata, _ = _read_safetensors_with_metadata(directory / WEIGHTS_FILE, weights_sha256)
    if "config_sha256" not in metadata:
        raise _lacks_digest(directory / WEIGHTS_FILE, "config_sha256", CONFIG_FILE)
    if metadata["config_sha256"] != _config_digest(config):
        raise ValueError(
            f"{config_file} does not match the digest its weights file records: "
            "it was changed or damaged after it was saved."
        )
    try:
        estimator = cls(**config["params"])
    except TypeError as exc:
        raise ValueError(f"{config_file} has unknown parameters: {exc}") from exc
    try:
        estimator._validate_params()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{config_file} has invalid parameters: {exc}") from exc
    # Before any is set: an entry named after a method would replace it.
    _check_state_names(config["state"], _STATE_OF[cls], config_file)
    for name, value in config["state"].items():
        try:
            setattr(estimator, name, _decode(value, tensors))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{config_file} has a malformed entry {name!r}: {exc}") from exc
    _check_fitted_state(estimator, config_file)
    return estimator


def _fitted_state(estimator):
    """``(name, value)`` of everything the estimator holds beyond its parameters, but its
    callbacks: live objects that belong to a session, not to the model."""
    params = estimator.get_params(deep=False)
    for name, value in vars(estimator).items():
        if name not in params and name not in _UNSAVED:
            yield name, value


def _encode(value, name, tensors):
    """A JSON-ready image of ``value``; its arrays go to ``tensors`` under path names.

    Dicts keep their key types and tuples stay tuples (JSON has neither), so that a
    loaded state equals the saved one exactly.
    """
    if isinstance(value, np.ndarray):
        if value.dtype not in DTYPE_CODES:
            # Feature names are an object array of strings: JSON holds them.
            if value.dtype == object and all(isinstance(item, str) for item in value.flat):
                return {"__strings__": value.tolist()}
            raise TypeError(f"cannot save {name}: arrays of {value.dtype} are not supported")
        tensors[name] = value
        return {"__tensor__": name, "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, dict):
        return {
            "__dict__": [
                [key, _encode(item, f"{name}.{key}", tensors)] for key, item in value.items()
            ]
        }
    if isinstance(value, list | tuple):
        items = [_encode(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, np.generic):
        return {"__scalar__": _encode(np.asarray(value), name, tensors)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # "nan", "inf" or "-inf"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot save {name}: values of type {type(value).__name__} are not supported")


def _decode(value, tensors):
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return _checked_tensor(value, tensors)
    if "__scalar__" in value:
        return _decode(value["__scalar__"], tensors)[()]
    if "__float__" in value:
        return float(value["__float__"])
    if "__strings__" in value:
        return np.asarray(value["__strings__"], dtype=object)
    if "__tuple__" in value:
        return tuple(_decode(item, tensors) for item in value["__tuple__"])
    if "__dict__" in value:
        return {key: _decode(item, tensors) for key, item in value["__dict__"]}
    raise ValueError(f"unexpected entry in the saved state: {sorted(value)}")


def _checked_tensor(reference, tensors):
    name = reference["__tensor__"]
    if name not in tensors:
        raise ValueError(f"the weights file has no array {name!r}, which config.json names")
    array = tensors[name]
    expected = (np.dtype(reference["dtype"]), tuple(reference["shape"]))
    if (array.dtype, array.shape) != expected:
        raise ValueError(
            f"array {name!r} is {array.dtype} of shape {array.shape} in the weights file, "
            f"but config.json records {expected[0]} of shape {expected[1]}"
        )
    return array


def _check_config(config, directory):
    if not isinstance(config, dict) or config.get("format") != "sksae":
        raise ValueError(f"{directory / CONFIG_FILE} is not an sksae model configuration.")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / CONFIG_FILE} has format version {config.get('format_version')!r}; "
            f"this sksae ({_sksae_version()}) reads version {FORMAT_VERSION}."
        )
    if not isinstance(config.get("class"), str) or config["class"] not in CLASSES:
        raise ValueError(
            f"{directory / CONFIG_FILE} names the class {config.get('class')!r}; only "
            f"{', '.join(CLASSES)} can be loaded."
        )
    if not isinstance(config.get("params"), dict) or not isinstance(config.get("state"), dict):
        raise ValueError(f"{directory / CONFIG_FILE} lacks the params or state of the model.")
    if "weights_sha256" not in config:
        raise _lacks_digest(directory / CONFIG_FILE, "weights_sha256", WEIGHTS_FILE)
    return CLASSES[config["class"]]


def _lacks_digest(file, key, other_file):
    return ValueError(
        f"{file} lacks {key}, the digest of its {other_file} that sksae.save records: "
        "without it, an altered file would load."
    )


class _Entry(NamedTuple):
    """What an entry of a saved fitted state must be, and a test of it: ``test(value,
    estimator)`` with the weights already checked."""

    requirement: str
    test: Callable
    #: Whether a model may lack it.
    optional: bool = False


def _is_count(value):
    return is_int(value) and value >= 0


def _are_numbers(values):
    return isinstance(values, list) and all(map(is_real, values))


def _is_float_array(value, shape):
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.shape == shape


def _are_feature_names(names, estimator):
    return (
        isinstance(names, np.ndarray)
        and names.shape == (estimator.n_features_in_,)
        and all(isinstance(name, str) for name in names)
    )


def _are_densities(densities, estimator):
    """Whether ``densities`` are the firing fractions of the latents (NaN: unknown)."""
    return (
        _is_float_array(densities, estimator.components_.shape[:1])
        and not ((densities < 0) | (densities > 1)).any()
    )


def _is_coder(coder, estimator):
    """Whether ``coder`` describes a coder as the detector's ``_coder`` does."""
    return isinstance(coder, dict) and coder.keys() == estimator._coder().keys()


def _is_sparsifier_of(params, estimator):
    """Whether ``params`` are those fit gives the sparsifier of a model of the
    estimator's number of latents (see ``_sparsifier_params``), by valid parameters."""
    if not isinstance(params, dict):
        return False
    options = {name: value for name, value in params.items() if name != "n_latents"}
    try:
        fitting = type(estimator)(estimator.components_.shape[0], **options)
        fitting._validate_params()
        fitting._check_sparsifier_params()
    except (TypeError, ValueError):
        return False
    return fitting._sparsifier_params() == params


def _initial_threshold(estimator):
    """The threshold of a new sparsifier of the fitted model, or None where it has none."""
    return getattr(_make_sparsifier(estimator._fitted_sparsifier_params), "threshold", None)


def _is_threshold_of(threshold, estimator):
    initial = _initial_threshold(estimator)
    if initial is None or not _is_float_array(threshold, tuple(initial.shape)):
        return False
    # NaN where a new sparsifier has NaN: BatchTopK's until a training batch kept a
    # positive activation, which none of a fit on data all zero does.
    untrained = np.isnan(threshold) & initial.isnan().numpy()
    return bool((untrained | (np.isfinite(threshold) & (threshold >= 0))).all())


def _are_training_units(units, estimator):
    """None, or arrays in training units twinning fitted arrays (``_model_attributes``)."""
    return units is None or (
        isinstance(units, dict)
        and all(
            isinstance(name, str)
            and isinstance(twin, np.ndarray)
            and isinstance(fitted := vars(estimator).get(name), np.ndarray)
            and (twin.dtype, twin.shape) == (fitted.dtype, fitted.shape)
            for name, twin in units.items()
        )
    )


def _is_fit_progress(progress):
    """Whether ``progress`` is what ``fit`` records after an epoch to resume from."""
    required = {"seed", "n_samples", "epoch", "generator", "schedule", "plateau"}
    # Unknown to the first versions of sksae that resumed fits: params, data_digest.
    if not (
        isinstance(progress, dict)
        and required <= progress.keys() <= required | {"params", "data_digest"}
    ):
        return False
    generator, schedule, plateau = (progress[name] for name in ["generator", "schedule", "plateau"])
    return (
        _is_count(progress["seed"])
        and _is_count(progress["n_samples"])
        and progress["n_samples"] > 0
        and _is_count(progress["epoch"])
        and (generator is None or _is_generator_state(generator))
        and _is_schedule(schedule)
        and isinstance(plateau, tuple | list)
        and len(plateau) == 2
        and is_real(plateau[0])
        and not math.isnan(plateau[0])
        and _is_count(plateau[1])
        and isinstance(progress.get("params", {}), dict)
        and isinstance(progress.get("data_digest"), str | None)
    )


def _is_generator_state(state):
    return (
        isinstance(state, np.ndarray)
        and state.dtype == np.uint8
        and state.shape == tuple(torch.Generator().get_state().shape)
    )


def _is_schedule(schedule):
    """Whether ``schedule`` holds the fields of a training ``Schedule``: step counts, a
    warm-up start, and a decay's start or None."""
    # alpha_warmup_steps: alpha_warmup_end's name in checkpoints saved mid-stream before.
    names = {field.name for field in dataclasses.fields(Schedule)} | {"alpha_warmup_steps"}
    return (
        isinstance(schedule, dict)
        and schedule.keys() <= names
        and all(
            (name == "decay_start" and value is None) or (is_real(value) and 0 <= value < math.inf)
            for name, value in schedule.items()
        )
    )


def _is_trainer_state(state, estimator):
    """Whether ``state`` is None or continues training the model; a ``ValueError`` says
    what is wrong with it."""
    problem = None if state is None else estimator._trainer_state_problem(state)
    if problem is not None:
        raise ValueError(problem)
    return True


#: The fitted state of a transformer but its weights, in the order of the checks: a test
#: may rely on the entries before it. A test may raise a ValueError that says what fails.
_STATE = {
    "n_features_in_": _Entry(
        "the number of columns of components_",
        lambda value, estimator: is_int(value) and value == estimator.components_.shape[1],
    ),
    "feature_names_in_": _Entry(
        "an array of n_features_in_ strings",
        _are_feature_names,
        optional=True,  # set by a fit on a DataFrame alone
    ),
    "_fitted_sparsifier_params": _Entry(
        "the parameters of a valid sparsifier of components_' latents (activation, "
        "k at most their number, bandwidth)",
        _is_sparsifier_of,
    ),
    "threshold_": _Entry(
        "an array of finite, non-negative thresholds of the shape of the fitted "
        "activation's, where it has any",
        _is_threshold_of,
        optional=True,  # required where the activation has one: see _check_fitted_state
    ),
    "input_scale_": _Entry(
        "a positive finite number", lambda value, _: is_real(value) and 0 < value < math.inf
    ),
    "feature_density_": _Entry(
        "an array of a fraction (or NaN) per latent",
        _are_densities,
    ),
    "dead_fraction_": _Entry(
        "a fraction or NaN", lambda value, _: is_real(value) and not (value < 0 or value > 1)
    ),
    "loss_curve_": _Entry("a list of numbers", lambda value, _: _are_numbers(value)),
    "n_iter_": _Entry("a non-negative int", lambda value, _: _is_count(value)),
    "n_steps_": _Entry("a non-negative int", lambda value, _: _is_count(value)),
    "validation_scores_": _Entry(
        "None or a list of numbers", lambda value, _: value is None or _are_numbers(value)
    ),
    "best_validation_score_": _Entry(
        "None or a number", lambda value, _: value is None or is_real(value)
    ),
    # partial_fit and a warm fit read the training state and the progress of an
    # interrupted fit.
    "_trainer_state": _Entry(
        "None or a state that continues training the model",
        _is_trainer_state,
        optional=True,  # an imported model has none
    ),
    # Unknown to the first versions of sksae, as the detector's _offset_coder:
    "n_samples_seen_": _Entry(
        "a non-negative int", lambda value, _: _is_count(value), optional=True
    ),
    "_fit_progress": _Entry(
        "None or the progress of an interrupted fit (seed, n_samples, epoch, generator, "
        "schedule and plateau; params and data_digest)",
        lambda value, _: value is None or _is_fit_progress(value),
        optional=True,
    ),
    "_training_units": _Entry(
        "None or a dict of arrays of the dtype and shape of the fitted arrays they name",
        _are_training_units,
        optional=True,
    ),
    # Set by set_output alone; transform refuses an output it does not know.
    "_sklearn_output_config": _Entry(
        "a dict of method names to output containers (set_output)",
        lambda value, _: (
            isinstance(value, dict)
            and all(isinstance(item, str) for item in [*value, *value.values()])
        ),
        optional=True,
    ),
}
#: Where each saved class's fitted state is described.
_STATE_OF = {
    SparseAutoencoderTransformer: _STATE,
    SparseAutoencoderOutlierDetector: {
        **_STATE,
        "offset_": _Entry(
            "a number, not NaN", lambda value, _: is_real(value) and not math.isnan(value)
        ),
        "_offset_coder": _Entry(
            "None or a dict of what shaped the scores (transform_algorithm, n_candidates)",
            lambda value, estimator: value is None or _is_coder(value, estimator),
            optional=True,
        ),
    },
}
_WEIGHTS = ["components_", "encoder_weights_", "encoder_bias_", "decoder_bias_"]


def _check_state_names(state, entries, config_file):
    """The saved state must name what save writes of the class: a model, and nothing
    else (a method, say)."""
    unknown = sorted(set(state) - {*_WEIGHTS, *entries})
    if unknown:
        raise ValueError(f"{config_file} has unknown fitted attributes: {', '.join(unknown)}.")
    required = [*_WEIGHTS, *(name for name, entry in entries.items() if not entry.optional)]
    missing = [name for name in required if name not in state]
    if missing:
        raise ValueError(f"{config_file} lacks the fitted attributes {', '.join(missing)}.")


def _check_fitted_state(estimator, config_file):
    """The fitted state must make a model: weights of consistent shapes and dtypes,
    finite, and each other entry what a fit gives it."""
    _check_weights(estimator, config_file)
    state = vars(estimator)
    for name, entry in _STATE_OF[type(estimator)].items():
        if name not in state:
            continue
        try:
            valid, found = entry.test(state[name], estimator), f"it is {_described(state[name])}"
        except ValueError as exc:
            valid, found = False, str(exc)
        if not valid:
            raise ValueError(f"{config_file}: {name} must be {entry.requirement}; {found}.")
    if "threshold_" not in state and _initial_threshold(estimator) is not None:
        raise ValueError(
            f"{config_file} lacks the fitted attribute threshold_, which activation="
            f"{estimator._fitted_sparsifier_params['activation']!r} needs."
        )


def _check_weights(estimator, config_file):
    if not (isinstance(estimator.components_, np.ndarray) and estimator.components_.ndim == 2):
        raise ValueError(f"components_ must be a 2-D array in {config_file}")
    # As a fit gives: float16 weights would train on no data its range can square.
    if estimator.components_.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"components_ must be float32 or float64 in {config_file}; it is "
            f"{estimator.components_.dtype}"
        )
    n_latents, n_features = estimator.components_.shape
    expected_shapes = [
        (n_latents, n_features),
        (n_latents, n_features),
        (n_latents,),
        (n_features,),
    ]
    for name, shape in zip(_WEIGHTS, expected_shapes, strict=True):
        array = getattr(estimator, name)
        if not isinstance(array, np.ndarray) or array.shape != shape:
            raise ValueError(f"{name} must be an array of shape {shape} in {config_file}")
        if array.dtype != estimator.components_.dtype:
            raise ValueError(f"{name} must have the dtype of components_ in {config_file}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds NaN or infinite values in {config_file}")


def _described(value):
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype} of shape {value.shape}"
    return reprlib.repr(value)


def _config_digest(config):
    """SHA-256 of the configuration's meaning: its canonical JSON, without the digest of
    the weights (which depends on this one)."""
    core = {key: value for key, value in config.items() if key != "weights_sha256"}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def _sksae_version():
    from . import __version__

    return __version__


def _read_bytes(path, missing):
    """The bytes of the file ``path``; a ``ValueError`` saying ``missing`` where there
    is none, or why it cannot be read (a directory, say)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(missing) from exc
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}.") from exc


def _read_json(path, missing):
    """The JSON value in the file ``path``; a ``ValueError`` saying ``missing`` where
    there is none, or why it cannot be read or parsed."""
    try:
        return json.loads(_read_bytes(path, missing))
    except JSON_ERRORS as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _safetensors_bytes(tensors, metadata=None):
    """The bytes of a safetensors file holding ``tensors`` (name -> numpy array), and
    ``metadata`` (str -> str) in its header."""
    header, offset, buffers = {}, 0, []
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name in sorted(tensors):
        array = tensors[name]
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {
            "dtype": DTYPE_CODES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        buffers.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(buffers)


def _read_safetensors(path, sha256=None):
    """The arrays of a safetensors file, after checking its header against its size
    and, when given, its bytes against their SHA-256 digest."""
    return _read_safetensors_with_metadata(path, sha256)[0]


def _read_safetensors_with_metadata(path, sha256=None):
    """:func:`_read_safetensors`, the header's metadata (str -> str) and the dtype code
    each array was stored in (``"BF16"`` arrays are read as float32)."""
    data = _read_bytes(path, f"{path} is missing: not a saved sksae model.")

    def invalid(reason):
        return ValueError(f"{path} is not a valid safetensors file: {reason}")

    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(
            f"{path} does not match the SHA-256 digest recorded in its {CONFIG_FILE}: the "
            "file was changed or damaged after it was saved."
        )

    if len(data) < 8:
        raise invalid("it is shorter than its 8-byte header length")
    header_length = int.from_bytes(data[:8], "little")
    if header_length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise invalid(f"its header length ({header_length} bytes) exceeds the file")
    try:
        header = json.loads(data[8 : 8 + header_length])
    except JSON_ERRORS as exc:
        raise invalid(f"its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise invalid("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise invalid("its metadata is not a JSON object")
    buffer = memoryview(data)[8 + header_length :]
    tensors, stored, covered = {}, {}, []
    for name, entry in header.items():
        try:
            dtype, shape, start, stop = _entry_layout(entry)
        except ValueError as exc:
            raise ValueError(f"{path}: entry {name!r} {exc}.") from exc
        if stop > len(buffer):
            raise invalid(f"entry {name!r} lies outside the data")
        array = _decoded(np.frombuffer(buffer[start:stop], dtype=dtype), entry["dtype"])
        tensors[name] = array.astype(array.dtype.newbyteorder("=")).reshape(shape)
        stored[name] = entry["dtype"]
        covered.append((start, stop))
    position = 0
    for start, stop in sorted(covered):
        if start != position:
            raise invalid("its entries overlap or leave gaps in the data")
        position = stop
    if position != len(buffer):
        raise invalid("its data is longer than its entries")
    return tensors, metadata, stored


def _entry_layout(entry):
    """``(dtype, shape, start, stop)`` of a safetensors header entry, the dtype
    little-endian; a ``ValueError`` (its message a predicate) when it is malformed."""
    try:
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"is malformed ({exc!r})") from exc
    for name, sizes in [("shape", shape), ("data_offsets", offsets)]:
        # JSON integers alone: int() would read a shape of [2.7, 3.9] as (2, 3).
        if not (isinstance(sizes, list) and all(is_int(size) and size >= 0 for size in sizes)):
            raise ValueError(f"has {name}={sizes!r}, not a list of non-negative integers")
    if len(offsets) != 2:
        raise ValueError(f"has data_offsets={offsets!r}, not a start and a stop")
    if not isinstance(code, str) or code not in DTYPES:
        # Float8, say: a valid file all the same, whose values numpy has no type for.
        raise ValueError(f"holds {code} values, which sksae does not read ({', '.join(DTYPES)})")
    dtype = DTYPES[code].newbyteorder("<")
    shape, (start, stop) = tuple(shape), offsets
    if start > stop:
        raise ValueError("lies outside the data")
    if stop - start != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"has {stop - start} bytes for shape {shape}")
    return dtype, shape, start, stop


def _decoded(array, code):
    """The values of an array read as stored: bfloat16 (``"BF16"``) becomes float32."""
    if code == "BF16":
        # numpy has no bfloat16: its bits are the top half of a float32's.
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array
