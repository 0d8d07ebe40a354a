"""Saving and loading fitted estimators without pickle.

A saved model is a directory of two files: ``model.safetensors`` holds every array of the
fitted state (weights, statistics, the optimiser's moments), ``config.json`` the class
name, the parameters, the sksae version, the rest of the fitted state with a typed
reference to each array, and the SHA-256 digest of the weights file, so that a damaged or
altered weights file is refused rather than loaded with wrong weights. Neither file can
run code when read: the safetensors format is a JSON header followed by raw little-endian
bytes, which this module reads and writes itself with numpy (the files open with the
``safetensors`` library too), and the JSON names the class among a fixed set."""

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from ._outlier import SparseAutoencoderOutlierDetector
from ._transformer import _CALLBACK_ATTRIBUTES, SparseAutoencoderTransformer

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


def save(estimator, path):
    """Save a fitted sksae estimator to the directory ``path``, without pickle.

    The directory (created if needed) receives ``model.safetensors``, every array of the
    fitted state, and ``config.json``, the class, its parameters, the sksae version and
    the other fitted attributes. Each file is written under a temporary name and renamed,
    so an interrupted save never leaves a half-written file under the final name.
    :func:`load` reads it back bitwise. A ``random_state`` that is not an int or None
    is saved as None: it only seeded the fit.

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
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / WEIGHTS_FILE, weights)
    _write_atomically(directory / CONFIG_FILE, config_json.encode())


def _json_param(name, value):
    """A parameter's value as JSON can hold it; numpy scalars (a grid built with
    ``np.arange``, say) become Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if name == "random_state" and not (value is None or isinstance(value, int)):
        return None  # a RandomState instance only seeded the fit
    if value is not None and not isinstance(value, (str, int, float)):
        raise TypeError(
            f"Cannot save the parameter {name}={value!r}: save writes parameters as JSON "
            "numbers, strings, booleans or None."
        )
    if isinstance(value, float) and not math.isfinite(value):
        # No parameter may be one (fit would refuse it): set_params validates nothing.
        raise ValueError(f"Cannot save the parameter {name}={value!r}: it must be finite.")
    return value


def load(path):
    """Load an estimator written by :func:`save`.

    Nothing in the files is executed: the class must be one of sksae's estimators, every
    array must have the dtype and shape its JSON reference records, and the weights must
    fit together (shapes, dtypes, finite values); anything else is a ``ValueError`` that
    says what is wrong.

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
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{directory} holds no {CONFIG_FILE}: not a saved sksae model.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from exc
    cls = _check_config(config, directory)
    weights_sha256 = config.pop("weights_sha256", None)
    tensors, metadata, _ = _read_safetensors_with_metadata(directory / WEIGHTS_FILE, weights_sha256)
    if "config_sha256" in metadata and metadata["config_sha256"] != _config_digest(config):
        raise ValueError(
            f"{directory / CONFIG_FILE} does not match the digest its weights file records: "
            "it was changed or damaged after it was saved."
        )
    try:
        estimator = cls(**config["params"])
    except TypeError as exc:
        raise ValueError(f"{directory / CONFIG_FILE} has unknown parameters: {exc}") from exc
    try:
        estimator._validate_params()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{directory / CONFIG_FILE} has invalid parameters: {exc}") from exc
    for name, value in config["state"].items():
        try:
            setattr(estimator, name, _decode(value, tensors))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"{directory / CONFIG_FILE} has a malformed entry {name!r}: {exc}"
            ) from exc
    _check_fitted_state(estimator, directory)
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
    if config.get("class") not in CLASSES:
        raise ValueError(
            f"{directory / CONFIG_FILE} names the class {config.get('class')!r}; only "
            f"{', '.join(CLASSES)} can be loaded."
        )
    if not isinstance(config.get("params"), dict) or not isinstance(config.get("state"), dict):
        raise ValueError(f"{directory / CONFIG_FILE} lacks the params or state of the model.")
    return CLASSES[config["class"]]


def _check_fitted_state(estimator, directory):
    """The weights must make a model: consistent shapes and dtypes, finite values."""
    try:
        weights = [getattr(estimator, name) for name in _WEIGHTS]
    except AttributeError as exc:
        raise ValueError(f"{directory} lacks a fitted weight: {exc}") from exc
    n_latents, n_features = estimator.components_.shape
    expected_shapes = [
        (n_latents, n_features),
        (n_latents, n_features),
        (n_latents,),
        (n_features,),
    ]
    for name, array, shape in zip(_WEIGHTS, weights, expected_shapes, strict=True):
        if not isinstance(array, np.ndarray) or array.shape != shape:
            raise ValueError(f"{name} must be an array of shape {shape} in {directory}")
        if array.dtype != estimator.components_.dtype or array.dtype.kind != "f":
            raise ValueError(f"{name} must have the float dtype of components_ in {directory}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds NaN or infinite values in {directory}")
    if estimator.n_features_in_ != n_features:
        raise ValueError(
            f"n_features_in_={estimator.n_features_in_} does not match the {n_features} "
            f"columns of components_ in {directory}"
        )


_WEIGHTS = ["components_", "encoder_weights_", "encoder_bias_", "decoder_bias_"]


def _config_digest(config):
    """SHA-256 of the configuration's meaning: its canonical JSON, without the digest of
    the weights (which depends on this one)."""
    core = {key: value for key, value in config.items() if key != "weights_sha256"}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def _sksae_version():
    from . import __version__

    return __version__


def _write_atomically(path, data):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


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
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(f"{path} is missing: not a saved sksae model.") from exc

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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
        code = entry["dtype"]
        shape = tuple(int(size) for size in entry["shape"])
        start, stop = (int(offset) for offset in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"is malformed ({exc!r})") from exc
    if not isinstance(code, str) or code not in DTYPES:
        # Float8, say: a valid file all the same, whose values numpy has no type for.
        raise ValueError(f"holds {code} values, which sksae does not read ({', '.join(DTYPES)})")
    dtype = DTYPES[code].newbyteorder("<")
    if any(size < 0 for size in shape) or not 0 <= start <= stop:
        raise ValueError("has a negative size or lies outside the data")
    if stop - start != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"has {stop - start} bytes for shape {shape}")
    return dtype, shape, start, stop


def _decoded(array, code):
    """The values of an array read as stored: bfloat16 (``"BF16"``) becomes float32."""
    if code == "BF16":
        # numpy has no bfloat16: its bits are the top half of a float32's.
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array
