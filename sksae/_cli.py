"""The ``sksae`` command line: train, evaluate and export sparse autoencoders on
activations stored on disk.

Usage:

.. code-block:: console

    $ python -m sksae fit acts.npy -o sae --n-components 4096 --k 32 --progress
    $ python -m sksae fit acts.npy -o sae --resume --max-iter 5   # 5 more epochs
    $ python -m sksae fit shards/ -o sae --max-iter 3            # 3 passes, shard by shard
    $ python -m sksae evaluate sae held_out.npy
    $ python -m sksae export sae -o sae-sparsify --format sparsify

``DATA`` is a ``.npy`` file, a ``.npz`` or ``.safetensors`` file of one or several 2-D
arrays, or a directory of such files, taken in the order of their names. Each array is a
shard; those of one file come in the order the file lists them. One array trains with
``fit``: a float32 or float64 ``.npy`` or ``.safetensors`` array is a memory map, which
the estimator reads one minibatch at a time (a half-precision one is converted to float32
in memory first). Several shards train with ``partial_fit``, one shard in memory
at a time, ``--max-iter`` passes over them all, in order, with the learning-rate schedule
of ``fit`` laid over those passes (``partial_fit_samples``) but no early end: shuffle the
samples across shards beforehand. ``evaluate`` encodes the shards chunk by chunk into
sparse codes and keeps only running sums. So no command holds more than one shard in
memory, nor all the codes.

Errors in the command line, the data or the parameters print one line,
``sksae: error: ...``, on stderr and exit with status 2; Ctrl-C during ``fit`` saves the
last completed epoch and exits with status 130.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.callback import ProgressBar
from sklearn.utils._param_validation import StrOptions

from ._external import export
from ._nn.batches import rows_per_chunk
from ._nn.training import TrainingDiverged
from ._persistence import (
    CONFIG_FILE,
    JSON_ERRORS,
    MAX_HEADER_BYTES,
    _decoded,
    _entry_layout,
    load,
    save,
    writable_directory,
)
from ._transformer import SparseAutoencoderTransformer

__all__ = ["main"]

#: Exit status of an error (argparse's convention) and of Ctrl-C (128 + SIGINT).
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: As a shell reports a process that SIGPIPE ended (``yes | head``).
EXIT_BROKEN_PIPE = 128 + 13

#: Values (rows x features) of data that ``evaluate`` encodes at a time. The codes come
#: back sparse, so the memory a chunk takes is about that of its rows.
EVALUATE_CHUNK_VALUES = 2**22

#: Quantiles of the density of the live latents that ``evaluate`` reports.
DENSITY_QUANTILES = {"min": 0.0, "q10": 0.1, "median": 0.5, "q90": 0.9, "max": 1.0}


def _none_or(kind):
    """A converter of option values to ``kind``, or to None for ``"none"``."""

    def convert(text):
        return None if text.lower() == "none" else kind(text)

    # argparse names the converter in its messages: "invalid int or none value: 'x'".
    convert.__name__ = f"{kind.__name__} or none"
    return convert


#: The parameters of SparseAutoencoderTransformer that ``fit`` sets, with the type of their
#: option and its help. Defaults and checks are the estimator's own, so they cannot drift.
FIT_PARAMETERS = {
    "n_components": (int, "number of latents (dictionary atoms)"),
    "activation": (str, "how the code is sparsified"),
    "k": (int, "active latents per sample (topk: at most, batchtopk: on average)"),
    "alpha": (float, "weight of the sparsity penalty (relu, jumprelu)"),
    "bandwidth": (float, "width of jumprelu's straight-through estimators"),
    "aux_k": (_none_or(int), "dead latents the AuxK loss uses (none: n_features // 2)"),
    "aux_coef": (float, "weight of the AuxK loss (0: off)"),
    "dead_steps": (int, "steps without firing after which a latent counts as dead"),
    "batch_size": (int, "samples per minibatch"),
    "learning_rate": (_none_or(float), "Adam's step size (none: a scaling law in n_components)"),
    "learning_rate_warmup_steps": (int, "steps over which the learning rate rises from 0"),
    "max_grad_norm": (_none_or(float), "clip the gradients' global norm to this (none: no clip)"),
    "max_iter": (int, "epochs; with shards, passes over all of them"),
    "tol": (float, "relative improvement for an epoch to count as one"),
    "max_no_improvement": (
        _none_or(int),
        "epochs without improvement before the cool-down (none: run --max-iter epochs)",
    ),
    "early_stopping": (bool, "hold out --validation-fraction and monitor its FVU"),
    "validation_fraction": (float, "fraction of the data --early-stopping holds out"),
    "normalize_input": (str, "scale the data to E||x|| = sqrt(n_features) for training"),
    "shuffle": (bool, "reshuffle the samples before each epoch"),
    "device": (str, "torch device: cpu, cuda, cuda:<index> or auto"),
    "autocast_dtype": (_none_or(str), "precision of the encoder's matrix product"),
    "random_state": (_none_or(int), "seed of the initialisation and the shuffling"),
    "verbose": (int, "print the loss of each epoch (each pass over shards) when positive"),
}


def main(argv=None):
    """Run the ``sksae`` command line.

    Parameters
    ----------
    argv : list of str or None, default=None
        The arguments after the program name; None reads ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success, 2 on an error (reported in one line on stderr), 130 when Ctrl-C
        interrupted ``fit``, 141 when the reader of the output went away (``| head``).

    Examples
    --------
    >>> from sksae._cli import main
    >>> main(["evaluate", "no-such-model", "data.npy"])  # prints one line on stderr
    2
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or an error _Parser.error has reported
        return exc.code
    try:
        status = args.command(args)
        if sys.stdout is not None:  # None when the process started with stdout closed
            sys.stdout.flush()  # here, where a reader gone away is caught
        return status
    except BrokenPipeError:
        # The reader of stdout (head, a pager) has gone: no one to tell. The process's
        # own stdout then writes to devnull, where Python's flush at exit cannot fail
        # again; a stdout that a caller of main put in its place is the caller's.
        if sys.stdout is sys.__stdout__ is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_BROKEN_PIPE
    # ImportError: --progress without rich. MemoryError and RuntimeError: a model too
    # large for memory, which torch reports as a RuntimeError (an OutOfMemoryError on GPUs).
    except (ValueError, TypeError, OSError, ImportError, MemoryError, RuntimeError) as exc:
        _report_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:  # fit saves its own progress first; nothing else has any
        _report("interrupted.")
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as the commands' own errors are."""

    def error(self, message):
        _report_error(message)
        self.exit(EXIT_ERROR)


def _report_error(message):
    # Messages from numpy or the estimator can span lines: the report is one.
    _report("error: " + " ".join(str(message).split()))


def _report(message):
    print("sksae:", message, file=sys.stderr)


def _build_parser():
    parser = _Parser(
        prog="sksae",
        description="Train, evaluate and export sparse autoencoders on activations on disk.",
    )
    commands = parser.add_subparsers(metavar="command", required=True)
    data_help = (
        "a .npy file, a .npz or .safetensors file of one or several 2-D arrays (shards), "
        "or a directory of such files"
    )

    fit = commands.add_parser(
        "fit",
        help="train a SparseAutoencoderTransformer and save it",
        description="Train a SparseAutoencoderTransformer on DATA and save it with "
        "sksae.save. One array trains with fit; several shards with partial_fit, one shard "
        "at a time, --max-iter passes over them with the learning-rate schedule of fit, the "
        "model saved after each pass.",
    )
    fit.add_argument("data", metavar="DATA", help=data_help)
    fit.add_argument(
        "-o",
        "--output",
        dest="model_dir",
        metavar="MODEL_DIR",
        required=True,
        help="directory to save the model in",
    )
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue training the model in MODEL_DIR: a run interrupted or saved by "
        "--checkpoint-every mid-way resumes where it stopped, with the training options "
        "it ran with (same DATA, same result as uninterrupted; other training options are "
        "an error); a finished one, or one with --early-stopping (which keeps no "
        "progress), trains --max-iter more epochs (passes), the estimator options given "
        "replacing its parameters",
    )
    fit.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        metavar="N",
        help="save the model to MODEL_DIR every N epochs (default: at the end; with "
        "shards, after every pass)",
    )
    fit.add_argument("--progress", action="store_true", help="show a progress bar (rich)")
    _add_estimator_options(fit)
    fit.set_defaults(command=_fit_command)

    evaluate = commands.add_parser(
        "evaluate",
        help="print FVU, L0 and feature density of a saved model on data",
        description="Print the fraction of variance unexplained, the mean number of active "
        "latents (L0), the fraction of dead latents and quantiles of the density of the "
        "live ones, of the model in MODEL_DIR on DATA.",
    )
    evaluate.add_argument("model_dir", metavar="MODEL_DIR", help="a model saved by fit")
    evaluate.add_argument("data", metavar="DATA", help=data_help)
    evaluate.set_defaults(command=_evaluate_command)

    export_parser = commands.add_parser(
        "export",
        help="write a saved model in another library's format",
        description="Write the model in MODEL_DIR in another library's format (sksae.export).",
    )
    export_parser.add_argument("model_dir", metavar="MODEL_DIR", help="a model saved by fit")
    export_parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="directory to write"
    )
    export_parser.add_argument(
        "--format", default="sparsify", help="checkpoint format (default: sparsify)"
    )
    export_parser.set_defaults(command=_export_command)
    return parser


def _add_estimator_options(parser):
    """One option per entry of :data:`FIT_PARAMETERS`, ``--n-components`` for
    ``n_components``. An option not given is absent from the parsed arguments, so that
    the estimator's default applies, or with ``--resume`` the saved model's value."""
    group = parser.add_argument_group(
        "estimator parameters",
        "As in SparseAutoencoderTransformer ('none' stands for None).",
    )
    defaults = SparseAutoencoderTransformer().get_params()
    for name, (kind, text) in FIT_PARAMETERS.items():
        option = "--" + name.replace("_", "-")
        help_text = f"{text} (default: {_shown(defaults[name])})"
        if kind is bool:
            group.add_argument(
                option,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                option,
                type=kind,
                default=argparse.SUPPRESS,
                metavar=_metavar(name),
                help=help_text,
            )


def _metavar(name):
    """``{a,b}`` for a parameter the estimator restricts to strings, else its name."""
    constraints = SparseAutoencoderTransformer._parameter_constraints[name]
    options = [
        option
        for constraint in constraints
        if isinstance(constraint, StrOptions)
        for option in sorted(constraint.options)
    ]
    if not options:
        return name.upper()
    if None in constraints:
        options.append("none")
    return "{" + ",".join(options) + "}"


def _shown(value):
    return "none" if value is None else value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# argparse names the converter in its messages: "invalid positive integer value: 'x'".
_positive_int.__name__ = "positive integer"


# ---------------------------------------------------------------------------- data


class _Shard(NamedTuple):
    """One array of DATA: a name for messages, a function that reads it and one that
    reads its ``(shape, dtype)`` alone, from the file's header (see :func:`_header`)."""

    label: str
    read: Callable[[], np.ndarray]
    header: Callable[[], tuple]


def _shards(path):
    """The shards of DATA, unread: one per array of each file, files in name order.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy``, ``.npz`` or ``.safetensors`` file, or a directory of them.

    Returns
    -------
    shards : list of _Shard
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            file for file in path.iterdir() if file.suffix in _READERS and file.is_file()
        )
        if not files:
            raise ValueError(f"{path} holds no {', '.join(_READERS)} file.")
    elif not path.exists():
        raise ValueError(f"{path} does not exist.")
    elif path.suffix not in _READERS:
        raise ValueError(f"{path} is not a {', '.join(_READERS)} file or a directory of them.")
    else:
        files = [path]
    shards = []
    for file in files:
        with _named(file):
            shards.extend(_READERS[file.suffix](file))
    if not shards:
        raise ValueError(f"{path} holds no arrays.")
    return shards


def _numpy_shards(file):
    """The arrays of a ``.npy`` file (a memory map) or a ``.npz`` archive (read one by
    one). ``np.load`` tells the two apart by their contents, not their names."""
    loaded = np.load(file, mmap_mode="r")
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        read = partial(np.load, file, mmap_mode="r")
        return [_Shard(str(file), read, lambda: _header(read()))]
    with loaded:
        names = loaded.files
    return [
        _Shard(
            f"{file}[{name}]", partial(_npz_member, file, name), partial(_npz_header, file, name)
        )
        for name in names
    ]


def _npz_member(file, name):
    with np.load(file) as archive:
        return archive[name]


def _npz_header(file, name):
    """The ``(shape, dtype)`` of an ``.npz`` member, from its ``.npy`` header: no data is
    read, but the member's size is checked against the header's extent. A member that
    is not a ``.npy`` file has neither (see :func:`_header`)."""
    with np.load(file) as archive:
        if f"{name}.npy" not in archive.zip.namelist():
            return None, None
        with archive.zip.open(f"{name}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is not None:
                shape, _, dtype = read_header(member)
                extent = member.tell() + math.prod(shape) * dtype.itemsize
                size = archive.zip.getinfo(f"{name}.npy").file_size
                # Objects are pickled, of no fixed size: refused for their dtype instead.
                if size < extent and not dtype.hasobject:
                    raise ValueError(
                        f"{file}[{name}] is truncated: its header describes {extent} "
                        f"bytes, and it holds {size}."
                    )
                return shape, dtype
    # Version 3.0 differs from 2.0 only in its header's encoding, which numpy reads
    # through private functions alone.
    return _header(_npz_member(file, name))


def _header(array):
    """``(shape, dtype)`` of a shard read; ``(None, None)`` for what is no array: an
    ``.npz`` member other than a ``.npy`` file, which reads as bytes."""
    return getattr(array, "shape", None), getattr(array, "dtype", None)


def _safetensors_shards(file):
    """The arrays of a safetensors file, each read through a memory map.

    Not ``sksae._persistence._read_safetensors``, which reads the whole file into
    memory: activations can outgrow memory, and a memory map streams like a ``.npy``
    file.
    """
    with open(file, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        if header_length > MAX_HEADER_BYTES:
            raise ValueError(f"{file} is not a safetensors file: its header is too long.")
        try:
            header = json.loads(f.read(header_length))
        except JSON_ERRORS as exc:
            raise ValueError(f"{file} is not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{file} is not a safetensors file: its header is not an object.")
    header.pop("__metadata__", None)
    data_start = 8 + header_length
    data_bytes = Path(file).stat().st_size - data_start
    return [
        _Shard(
            f"{file}[{name}]",
            partial(_safetensors_array, file, name, data_start, entry, data_bytes),
            partial(_safetensors_header, file, name, entry, data_bytes),
        )
        for name, entry in header.items()
    ]


def _safetensors_layout(file, name, entry, data_bytes):
    """The layout of one entry, checked to lie within the file's ``data_bytes``: a
    truncated file must fail the check of the shapes before training, not the read of
    its last shard after hours of it."""
    try:
        layout = _entry_layout(entry)
    except ValueError as exc:
        raise ValueError(f"{file}[{name}] {exc}.") from exc
    if layout[3] > data_bytes:
        raise ValueError(
            f"{file}[{name}] ends {layout[3]} bytes into the data, which holds "
            f"{max(data_bytes, 0)}: the file is truncated."
        )
    return layout


def _safetensors_header(file, name, entry, data_bytes):
    dtype, shape, _, _ = _safetensors_layout(file, name, entry, data_bytes)
    return shape, dtype


def _safetensors_array(file, name, data_start, entry, data_bytes):
    dtype, shape, start, _ = _safetensors_layout(file, name, entry, data_bytes)
    array = np.memmap(file, dtype=dtype, mode="r", offset=data_start + start, shape=shape)
    return _decoded(array, entry["dtype"])


#: File suffix -> function listing the shards of such a file.
_READERS = {".npy": _numpy_shards, ".npz": _numpy_shards, ".safetensors": _safetensors_shards}


def _arrays(shards, n_features=None):
    """Read the shards one at a time, each checked to be 2-D with ``n_features`` columns
    (by default those of the first).

    Half-precision shards become float32: the estimator would otherwise widen them to
    float64, which doubles memory for precision the data never had.
    """
    for shard in shards:
        with _named(shard.label):
            X = shard.read()
        n_features = _checked_header(shard.label, *_header(X), n_features)
        # Of either byte order: ">f2" is not np.float16.
        yield X.astype(np.float32) if X.dtype.kind == "f" and X.dtype.itemsize == 2 else X


def _checked_header(label, shape, dtype, n_features):
    """Check that the array ``label`` has a 2-D ``shape`` with ``n_features`` columns
    (any, when None) and a ``dtype`` the estimator trains on; return its number of
    columns. A ``shape`` of None: not an array at all."""
    if shape is None:
        raise ValueError(f"{label} is not a .npy array.")
    # The estimator's own check would come only when the shard's turn to train does, and
    # prints its values rather than its name.
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{label} holds {dtype} values; sksae needs real numbers (bool, integer or "
            "floating-point)."
        )
    if len(shape) != 2:
        raise ValueError(
            f"{label} holds an array of shape {tuple(shape)}; sksae needs 2-D arrays of shape "
            "(n_samples, n_features)."
        )
    if n_features is not None and shape[1] != n_features:
        raise ValueError(
            f"{label} has {shape[1]} features, but the model or the shards before it have "
            f"{n_features}."
        )
    return shape[1]


@contextmanager
def _named(label, errors=(OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)):
    """Report an error of the types ``errors`` about the file ``label`` (one that
    cannot be read: empty, truncated, not what its name says; or whose values the
    estimator refuses) as a ``ValueError`` that names it."""
    try:
        yield
    except errors as exc:
        message = str(exc)
        raise ValueError(message if str(label) in message else f"{label}: {message}") from exc


# ---------------------------------------------------------------------------- fit


def _fit_command(args):
    params = {name: getattr(args, name) for name in FIT_PARAMETERS if hasattr(args, name)}
    model_dir = Path(args.model_dir)
    data = Path(args.data).resolve()
    # DATA's subdirectories are not read: only DATA itself would read the model as data.
    if data.is_dir() and data == model_dir.resolve():
        raise ValueError(
            f"MODEL_DIR {model_dir} is DATA {args.data}: the model's files would be read as "
            "data next time. Choose another MODEL_DIR, a subdirectory of DATA for one."
        )
    changed = []
    warm_start = False
    if args.resume:
        model = load(model_dir)
        saved = model._training_params()
        changed = [name for name, value in params.items() if saved.get(name, value) != value]
        # warm_start: fit continues the saved model (partial_fit always does). Only for
        # this run: the model is saved with the value it was loaded with.
        warm_start = model.warm_start
        model.set_params(**params, warm_start=True)
    elif (model_dir / CONFIG_FILE).exists():
        raise ValueError(
            f"{model_dir} already holds a model: pass --resume to train it further, or "
            "choose another directory."
        )
    else:
        model = SparseAutoencoderTransformer(**params)
    # Checked before reading any data: fit first scans all of it, a long wait for an error.
    # Its warnings (k above n_components) come from fit itself, once.
    model._validate_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model._check_sparsifier_params()
    if args.resume and (shape_changes := model._model_shape_changes()):
        raise ValueError(
            f"--resume trains the model in {model_dir} further, whose n_components, "
            f"activation, k and bandwidth cannot change; got {', '.join(shape_changes)}. "
            "Drop those options, or train a new model in another MODEL_DIR."
        )
    shards = _shards(args.data)
    if len(shards) > 1 and model.early_stopping:
        fitted_with = (
            "--early-stopping"
            if "early_stopping" in params
            else f"the model in {model_dir} was fitted with early stopping, which"
        )
        raise ValueError(
            f"{fitted_with} needs DATA to be one array: shards train with partial_fit, "
            "which holds no data out. Pass --no-early-stopping to train on shards."
        )
    if args.resume and model.early_stopping:
        _report(
            "a fit with early stopping keeps no progress: --resume trains "
            f"--max-iter ({model.max_iter}) more epochs from its best one."
        )
    created = not model_dir.exists()
    save_model = partial(_save, directory=model_dir, warm_start=warm_start)
    try:
        # Before any training: a MODEL_DIR that saving would fail to write must not
        # cost the training first.
        _check_writable(writable_directory(model_dir))
        if len(shards) == 1:
            loss = _fit_array(model, shards, args, save_model)
            trained = f"n_iter_={model.n_iter_}"
        else:
            loss, passes = _fit_shards(model, shards, args, changed, save_model)
            # Not n_iter_, which counts partial_fit calls: one per shard.
            trained = f"{passes} pass{'es' * (passes != 1)} over {len(shards)} shards"
        save_model(model)
    except KeyboardInterrupt:
        return _save_interrupted(model, model_dir, save_model)
    finally:
        # A run that saved nothing, failed or interrupted, leaves no empty MODEL_DIR.
        if created and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()
    print(f"Saved the model to {model_dir} ({trained}, loss {loss:.5g}).")
    return 0


def _check_writable(directory):
    """A ``ValueError`` unless a file can be written in ``directory``: ``mkdir`` passes
    a read-only directory that exists."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(f"MODEL_DIR {directory} is not writable: {exc.strerror or exc}.") from exc


def _save(model, directory, warm_start):
    """Save ``model`` to ``directory`` with ``warm_start`` as it was before ``--resume``
    set it: a model loaded later starts a fresh fit unless its user chose otherwise."""
    model.set_params(warm_start=warm_start)
    save(model, directory)


def _fit_array(model, shards, args, save_model):
    """``fit`` on the one array, with the callbacks the options ask for; ``save_model``
    saves a checkpoint. Return the loss of the last epoch."""
    (X,) = _arrays(shards, getattr(model, "n_features_in_", None))
    callbacks = []
    if args.progress:
        callbacks.append(ProgressBar())
    if args.checkpoint_every:
        # A callback rather than fits of N epochs with warm_start: each fit plans its own
        # learning-rate decay and plateau detection, so slices would train another model
        # than one fit, which the callback checkpoints without changing it.
        callbacks.append(_Checkpoint(save_model, args.checkpoint_every))
    model.set_callbacks(*callbacks)
    # fit reads the values: a NaN names the file. Not an OSError, which a checkpoint's
    # saving raises, about MODEL_DIR.
    with _named(shards[0].label, errors=ValueError):
        model.fit(X)
    return model.loss_curve_[-1]


def _fit_shards(model, shards, args, changed, save_model):
    """``partial_fit`` on each shard in turn, ``max_iter`` passes, saving (with
    ``save_model``) every ``--checkpoint-every`` passes (by default every pass); or, for
    a run ``--resume`` finds interrupted, the rest of its passes. ``changed``: the
    training parameters that the command's options change in the resumed model. Return
    the loss of the last pass, and the number of passes run (or finished)."""
    # Every shard's shape and dtype, from the headers, checked before the first one
    # trains: a bad shard found after hours of training would lose them.
    n_features = getattr(model, "n_features_in_", None)
    n_shard_rows = []
    for shard in shards:
        with _named(shard.label):
            shape, dtype = shard.header()
        n_features = _checked_header(shard.label, shape, dtype, n_features)
        if shape[0] == 0:  # partial_fit would refuse it, after the shards before it
            raise ValueError(f"{shard.label} holds no rows.")
        n_shard_rows.append(shape[0])
    n_rows = sum(n_shard_rows)
    seen, plan = getattr(model, "n_samples_seen_", 0), model.partial_fit_samples
    if args.resume and plan is not None and seen < plan:
        # A run interrupted mid-plan: finish it, from the shard after the last one trained.
        first_pass, first_shard = _resume_point(model, n_shard_rows, changed)
    else:
        # fit's schedule over the passes to come, so that shards train as one array
        # would. A finished model's plan grows by the new passes: the schedule is laid
        # over all of them.
        model.set_params(partial_fit_samples=seen + model.max_iter * n_rows)
        first_pass, first_shard = 0, 0
    every = args.checkpoint_every or 1
    steps = [
        (number, index)
        for number in range(first_pass, model.max_iter)
        for index in range(first_shard if number == first_pass else 0, len(shards))
    ]
    if args.progress:
        # Imported here: rich is optional, needed only for progress bars.
        from rich.progress import track

        # partial_fit has no callbacks: the bar counts shards.
        steps = track(steps, description="partial_fit")
    for number, index in steps:
        try:
            (X,) = _arrays([shards[index]], n_features)
            with _named(shards[index].label):
                model.partial_fit(X)
        except ValueError as exc:
            # Values are read as each shard's turn comes (a NaN): the model stands as
            # before the shard, which --resume can go on from once the shard is fixed.
            # Not after a divergence, which --resume would repeat with the learning rate
            # it keeps: the error says to lower it, for a run anew.
            if getattr(model, "n_samples_seen_", 0) == seen or _diverged(exc):
                raise
            save_model(model)
            raise ValueError(
                f"{exc} The model of the shards before it is saved: --resume goes on from "
                "that shard."
            ) from exc
        if index < len(shards) - 1:
            continue
        # The mean of the pass's shard losses, weighted by their rows, as fit's epochs.
        loss = np.average(model.loss_curve_[-len(shards) :], weights=n_shard_rows)
        if model.verbose:
            print(f"pass {number + 1}: loss {loss:.5g}")
        if (number + 1) % every == 0:
            save_model(model)
    return loss, model.max_iter - first_pass


def _resume_point(model, n_shard_rows, changed):
    """Where the shard run that ``model`` holds stopped: its pass and next shard.

    The run planned ``max_iter`` passes over the shards (``partial_fit_samples``), of
    which ``n_samples_seen_`` tell how far it went. Resumed with the same options on the
    same shards, it ends as the uninterrupted run would have.
    """
    if changed:
        options = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ValueError(
            f"The model holds a run interrupted after {model.n_samples_seen_} of its "
            f"{model.partial_fit_samples} planned samples, which --resume finishes with the "
            f"options it ran with; drop {options}."
        )
    n_rows = sum(n_shard_rows)
    trained = model.n_samples_seen_ - (model.partial_fit_samples - model.max_iter * n_rows)
    shard_starts = np.cumsum([0, *n_shard_rows[:-1]])
    if not 0 <= trained < model.max_iter * n_rows or trained % n_rows not in shard_starts:
        raise ValueError(
            f"The model holds a run interrupted after {model.n_samples_seen_} of its "
            f"{model.partial_fit_samples} planned samples, which does not end on a shard of "
            "DATA: --resume needs the shards it ran on."
        )
    return trained // n_rows, int(np.searchsorted(shard_starts, trained % n_rows))


class _Checkpoint:
    """Fit callback that saves the model every ``every`` epochs.

    It follows scikit-learn's ``FitCallback`` protocol: at the end of each epoch the
    estimator hands it ``fitted_estimator``, a copy in the state of that epoch.

    Parameters
    ----------
    save_model : callable
        Saves the model it is given (:func:`_save`).
    every : int
        Save when the model's ``n_iter_`` is a multiple of it, so that a resumed fit
        keeps the rhythm of the first.
    """

    def __init__(self, save_model, every):
        self.save_model = save_model
        self.every = every

    def setup(self, estimator, context):
        """Nothing to prepare."""

    def on_fit_task_begin(self, estimator, context):
        """Nothing to do before an epoch."""

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None):
        """Save ``fitted_estimator`` at the end of every ``every``-th epoch."""
        # The epochs are the subtasks of the fit; the command saves the fit's own end.
        if context.parent is not None and fitted_estimator.n_iter_ % self.every == 0:
            self.save_model(fitted_estimator)

    def teardown(self, estimator, context):
        """Nothing to release."""


def _diverged(error):
    """Whether ``error`` reports a training that ran away (one of its causes is a
    :class:`~sksae._nn.training.TrainingDiverged`)."""
    while error is not None:
        if isinstance(error, TrainingDiverged):
            return True
        error = error.__cause__
    return False


def _save_interrupted(model, model_dir, save_model):
    """Save what an interrupted training left: ``fit`` restores its last completed epoch,
    ``partial_fit`` the state before the interrupted shard."""
    if not hasattr(model, "components_"):
        _report("interrupted before the first epoch ended; nothing to save.")
        return EXIT_INTERRUPTED
    save_model(model)
    _report(
        f"interrupted; saved the model of the last completed epoch or shard "
        f"(n_iter_={model.n_iter_}) to {model_dir}."
    )
    return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------- evaluate


def _evaluate_command(args):
    model = load(args.model_dir)
    print(_format_evaluation(_evaluate(model, _shards(args.data))))
    return 0


def _evaluate(model, shards):
    """Reconstruction and sparsity of ``model`` on the shards, in bounded memory.

    Each chunk of rows is encoded into sparse codes (``sparse_output``) and decoded;
    only running sums outlive it: the squared error, the sum of squared deviations from
    the mean (merged across chunks as Chan et al. do, which keeps float64's precision;
    of the rows less the first row, which leaves a constant column exactly zero), and
    how often each latent fired.

    Parameters
    ----------
    model : SparseAutoencoderTransformer
        A fitted model.
    shards : list of _Shard
        The data, from :func:`_shards`.

    Returns
    -------
    evaluation : dict
        ``n_samples``, ``fvu``, ``l0``, ``dead_fraction`` (as :mod:`sksae.metrics`
        computes them on all the data at once), ``n_dead``, ``n_latents`` and ``density``,
        the quantiles :data:`DENSITY_QUANTILES` of the density of the live latents (NaN
        when every latent is dead).
    """
    model.set_params(sparse_output=True)
    n_latents = model.components_.shape[0]
    fired = np.zeros(n_latents, dtype=np.int64)
    n_samples, mean, deviation, residual = 0, np.zeros(model.n_features_in_), 0.0, 0.0
    reference = None
    for shard in shards:
        (X,) = _arrays([shard], model.n_features_in_)
        chunk_rows = rows_per_chunk(X.shape[1], EVALUATE_CHUNK_VALUES)
        for start in range(0, X.shape[0], chunk_rows):
            with warnings.catch_warnings(), _named(shard.label):
                # Shards are arrays: a model fitted on a DataFrame has no names to match.
                warnings.filterwarnings("ignore", "X does not have valid feature names")
                chunk, largest = model._validate_input_and_largest(
                    np.asarray(X[start : start + chunk_rows])
                )
            # Not transform, whose output set_output may have set to pandas.
            codes = model._transform_validated(chunk)
            fired += np.bincount(codes.indices[codes.data != 0], minlength=n_latents)
            chunk = chunk.astype(np.float64)
            if reference is None:
                reference = chunk[0].copy()
                # The sums in units of the first chunk's largest value, whose ratio is
                # the same: as in metrics.fvu, squares beyond 1e154 overflow, and below
                # 1e-154 underflow.
                unit = largest or 1.0
            residual += np.square((chunk - model.inverse_transform(codes)) / unit).sum()
            chunk -= reference
            chunk /= unit
            chunk_mean = chunk.mean(axis=0)
            delta, total = chunk_mean - mean, n_samples + len(chunk)
            deviation += np.square(chunk - chunk_mean).sum()
            deviation += delta @ delta * n_samples * len(chunk) / total
            mean += delta * len(chunk) / total
            n_samples = total
    if n_samples == 0:
        raise ValueError("DATA holds no samples.")
    density = fired / n_samples
    live = density[density > 0]
    with np.errstate(divide="ignore", invalid="ignore"):  # constant data: as metrics.fvu
        fvu = float(np.float64(residual) / deviation)
    return {
        "n_samples": n_samples,
        "fvu": fvu,
        "l0": float(fired.sum() / n_samples),
        "dead_fraction": float(np.mean(density == 0)),
        "n_dead": int(np.sum(density == 0)),
        "n_latents": n_latents,
        "density": {
            name: float(np.quantile(live, q)) if live.size else math.nan
            for name, q in DENSITY_QUANTILES.items()
        },
    }


def _format_evaluation(evaluation):
    density = "  ".join(f"{name} {value:.4g}" for name, value in evaluation["density"].items())
    return "\n".join(
        [
            f"samples        {evaluation['n_samples']}",
            f"FVU            {evaluation['fvu']:.6g}",
            f"L0             {evaluation['l0']:.6g}",
            f"dead fraction  {evaluation['dead_fraction']:.6g} "
            f"({evaluation['n_dead']} of {evaluation['n_latents']} latents)",
            f"live density   {density}",
        ]
    )


# ---------------------------------------------------------------------------- export


def _export_command(args):
    export(load(args.model_dir), args.output, format=args.format)
    print(f"Wrote the model in {args.format}'s format to {args.output}.")
    return 0
