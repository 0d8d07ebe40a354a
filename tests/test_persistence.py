"""sksae.save / sksae.load: a directory of safetensors weights and a JSON configuration."""

import hashlib
import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sksae
from sksae import SparseAutoencoderOutlierDetector, SparseAutoencoderTransformer, _persistence
from sksae._persistence import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    _config_digest,
    _read_safetensors,
    _read_safetensors_with_metadata,
    _safetensors_bytes,
)


def _assert_same(saved, loaded, where="estimator"):
    """Same types, same keys in the same order, bitwise equal arrays and equal values.

    (Comparing pickles would not do: pickle's memo depends on object identity.)
    """
    assert type(loaded) is type(saved), where
    if isinstance(saved, dict):
        assert list(loaded) == list(saved), where
        for key in saved:
            _assert_same(saved[key], loaded[key], f"{where}.{key}")
    elif isinstance(saved, list | tuple):
        assert len(loaded) == len(saved), where
        for i, (a, b) in enumerate(zip(saved, loaded, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(saved, np.ndarray):
        assert (loaded.dtype, loaded.shape) == (saved.dtype, saved.shape), where
        if saved.dtype == object:
            assert loaded.tolist() == saved.tolist(), where
        else:
            assert loaded.tobytes() == saved.tobytes(), where
    else:
        assert loaded == saved or (saved != saved and loaded != loaded), where


def _fit(cls=SparseAutoencoderTransformer, X=None, **params):
    defaults = dict(n_components=64, k=3, max_iter=3, random_state=0)
    return cls(**{**defaults, **params}).fit(X)


@pytest.mark.parametrize(
    "cls, params",
    [
        (SparseAutoencoderTransformer, dict(activation="topk")),
        (SparseAutoencoderTransformer, dict(activation="batchtopk")),
        (SparseAutoencoderTransformer, dict(activation="jumprelu", normalize_input="mean_norm")),
        (SparseAutoencoderTransformer, dict(activation="relu", early_stopping=True)),
        (SparseAutoencoderTransformer, dict(transform_algorithm="pursuit", sparse_output=True)),
        (SparseAutoencoderOutlierDetector, dict(contamination=0.1)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(superposition_small, tmp_path, cls, params, dtype):
    X = superposition_small[0].astype(dtype)
    model = _fit(cls, X, **params)
    sksae.save(model, tmp_path)
    loaded = sksae.load(tmp_path)
    assert type(loaded) is cls
    _assert_same(vars(model), vars(loaded))  # every fitted attribute, bitwise
    codes = model.transform(X)
    loaded_codes = loaded.transform(X)
    assert type(loaded_codes) is type(codes)
    assert (loaded_codes != codes).sum() == 0
    # Training continues where it stopped: Adam's moments and the clocks were saved.
    np.testing.assert_array_equal(
        loaded.partial_fit(X).components_, model.partial_fit(X).components_
    )


@pytest.mark.parametrize("cls", [SparseAutoencoderTransformer, SparseAutoencoderOutlierDetector])
def test_skops_round_trips_trusting_the_estimator_class_alone(superposition_small, cls):
    sio = pytest.importorskip("skops.io")
    X = superposition_small[0]
    model = _fit(cls, X, transform_algorithm="pursuit")
    data = sio.dumps(model)
    # skops refuses the unknown class until trusted; nothing else in the file needs trust.
    assert sio.get_untrusted_types(data=data) == [f"{cls.__module__}.{cls.__name__}"]
    loaded = sio.loads(data, trusted=[f"{cls.__module__}.{cls.__name__}"])
    _assert_same(vars(model), vars(loaded))
    assert (loaded.transform(X) != model.transform(X)).sum() == 0


def test_feature_names_and_output_config_survive(superposition_small, tmp_path):
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(superposition_small[0], columns=[f"f{i}" for i in range(16)])
    model = _fit(X=X).set_output(transform="pandas")
    sksae.save(model, tmp_path)
    loaded = sksae.load(tmp_path)
    np.testing.assert_array_equal(loaded.feature_names_in_, model.feature_names_in_)
    assert list(loaded.transform(X).columns) == list(model.transform(X).columns)


def test_the_weights_file_is_standard_safetensors(superposition_small, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    model = _fit(X=superposition_small[0])
    sksae.save(model, tmp_path)
    arrays = safetensors_numpy.load_file(str(tmp_path / WEIGHTS_FILE))
    np.testing.assert_array_equal(arrays["components_"], model.components_)
    # ...and a file written by the safetensors library loads too (with the digests).
    _, metadata, _ = _read_safetensors_with_metadata(tmp_path / WEIGHTS_FILE)
    safetensors_numpy.save_file(arrays, str(tmp_path / WEIGHTS_FILE), metadata=metadata)
    digest = hashlib.sha256((tmp_path / WEIGHTS_FILE).read_bytes()).hexdigest()
    _edit_config(tmp_path, lambda config: config.update(weights_sha256=digest), reseal=False)
    np.testing.assert_array_equal(sksae.load(tmp_path).components_, model.components_)


def test_a_model_saved_for_a_gpu_loads_and_encodes_on_a_cpu(
    superposition_small, tmp_path, monkeypatch
):
    X, _ = superposition_small
    model = _fit(X=X)
    expected = model.transform(X)
    sksae.save(model.set_params(device="cuda"), tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    np.testing.assert_array_equal(sksae.load(tmp_path).transform(X), expected)


class _SaveEachEpoch:
    """A fit callback that saves the model of each epoch, as a checkpoint would."""

    def __init__(self, directory):
        self.directory = directory

    def setup(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None, **kwargs):
        if context.parent is not None:  # an epoch, not the whole fit
            sksae.save(fitted_estimator, self.directory / f"epoch{fitted_estimator.n_iter_}")

    def teardown(self, estimator, context):
        pass


def test_a_step_of_a_pipeline_saves_from_a_callback(superposition_small, tmp_path):
    # During the fit of each step, a Pipeline links its callback context to the step's
    # (_parent_callback_ctx), which is no part of the model.
    X, _ = superposition_small
    sae = SparseAutoencoderTransformer(n_components=64, k=3, max_iter=2, random_state=0)
    make_pipeline(sae.set_callbacks(_SaveEachEpoch(tmp_path)), StandardScaler()).fit(X)
    np.testing.assert_array_equal(sksae.load(tmp_path / "epoch2").components_, sae.components_)


def _edit_config(path, edit, *, reseal=True, arrays=None):
    """Edit config.json, and save ``arrays`` (name -> array) as the fitted attributes of
    those names; ``reseal`` updates the two files' digests of each other, so that the
    checks behind the digests are what is tested."""
    config = json.loads((path / CONFIG_FILE).read_text())
    edit(config)
    if reseal:
        config.pop("weights_sha256", None)
        tensors = _read_safetensors(path / WEIGHTS_FILE)
        for name, array in (arrays or {}).items():
            tensors[name] = array
            reference = {"__tensor__": name, "dtype": str(array.dtype), "shape": list(array.shape)}
            config["state"][name] = reference
        weights = _safetensors_bytes(tensors, {"config_sha256": _config_digest(config)})
        (path / WEIGHTS_FILE).write_bytes(weights)
        config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    (path / CONFIG_FILE).write_text(json.dumps(config))


def _set_shape(config):
    config["state"]["components_"]["shape"] = [63, 16]


def _corrupt_weights(path, transform):
    """Damage the weights file, and record the digest of the damage so that the checks
    of the file's structure are what is tested (the digest alone catches any change)."""
    data = transform((path / WEIGHTS_FILE).read_bytes())
    (path / WEIGHTS_FILE).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    _edit_config(path, lambda config: config.update(weights_sha256=digest), reseal=False)


def _strip_config_digest(path):
    """Write the weights file without the digest of config.json it holds."""
    tensors = _read_safetensors(path / WEIGHTS_FILE)
    _corrupt_weights(path, lambda _: _safetensors_bytes(tensors))


def _make_a_directory(file):
    file.unlink()
    file.mkdir()


def _deeply_nested_header(data):
    header = b"[" * 100_000
    return len(header).to_bytes(8, "little") + header


def _flip_a_weight_byte(path):
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0x10
    (path / WEIGHTS_FILE).write_bytes(bytes(data))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: _edit_config(p, _set_shape), "records float32 of shape"),
        (lambda p: _edit_config(p, lambda c: c.update({"class": "os.system"})), "only"),
        (lambda p: _edit_config(p, lambda c: c.update({"class": {"a": 1}})), "only"),
        (lambda p: _edit_config(p, lambda c: c.update({"format_version": 99})), "version"),
        (lambda p: _edit_config(p, lambda c: c["params"].update({"bad": 1})), "unknown param"),
        (lambda p: _edit_config(p, lambda c: c["params"].update({"k": -1})), "invalid param"),
        (
            lambda p: _edit_config(p, lambda c: c["state"].pop("components_")),
            "lacks the fitted attributes components_",
        ),
        (
            lambda p: _edit_config(p, lambda c: c["state"].update(n_features_in_=3)),
            "n_features_in_",
        ),
        (lambda p: (p / CONFIG_FILE).write_text("{not json"), "not valid JSON"),
        (lambda p: (p / CONFIG_FILE).write_text("[" * 100_000), "not valid JSON"),
        (
            lambda p: _edit_config(p, lambda c: c["params"].update(k=4), reseal=False),
            "config.json does not match the digest",
        ),
        (lambda p: (p / CONFIG_FILE).unlink(), "no config.json"),
        (lambda p: (p / WEIGHTS_FILE).unlink(), "missing"),
        (lambda p: _corrupt_weights(p, lambda d: d[: len(d) // 2]), "not a valid safetensors"),
        (lambda p: _corrupt_weights(p, lambda d: d[:5]), "not a valid safetensors"),
        (lambda p: _corrupt_weights(p, lambda d: (2**62).to_bytes(8, "little") + d[8:]), "exceeds"),
        (lambda p: _corrupt_weights(p, lambda d: d[:8] + b"[" + d[9:]), "not JSON"),
        (lambda p: _corrupt_weights(p, _deeply_nested_header), "not JSON"),
        (lambda p: _corrupt_weights(p, lambda d: d + b"\0" * 8), "longer than its entries"),
        (_flip_a_weight_byte, "SHA-256"),
        # Without its digests, an altered file would load: they cannot be dropped.
        (
            lambda p: _edit_config(p, lambda c: c.pop("weights_sha256"), reseal=False),
            "config.json lacks weights_sha256",
        ),
        (_strip_config_digest, "model.safetensors lacks config_sha256"),
        (lambda p: _make_a_directory(p / CONFIG_FILE), "config.json cannot be read"),
        (lambda p: _make_a_directory(p / WEIGHTS_FILE), "model.safetensors cannot be read"),
    ],
)
def test_a_damaged_file_is_rejected_with_a_clear_error(
    superposition_small, tmp_path, corrupt, match
):
    sksae.save(_fit(X=superposition_small[0]), tmp_path)
    corrupt(tmp_path)
    with pytest.raises(ValueError, match=match):
        sksae.load(tmp_path)


def test_load_of_a_file_names_it(superposition_small, tmp_path):
    sksae.save(_fit(X=superposition_small[0]), tmp_path)
    with pytest.raises(ValueError, match=r"config\.json/config\.json cannot be read"):
        sksae.load(tmp_path / CONFIG_FILE)


@pytest.fixture(scope="module")
def models(superposition_small):
    """Fitted models to save and alter, by activation."""
    X = superposition_small[0]
    return {
        "topk": _fit(X=X),
        "jumprelu": _fit(X=X, activation="jumprelu", normalize_input="mean_norm"),
        "detector": _fit(SparseAutoencoderOutlierDetector, X=X),
    }


def _set_sparsifier_param(config, name, value):
    params = config["state"]["_fitted_sparsifier_params"]["__dict__"]
    params[:] = [[key, item] for key, item in params if key != name] + [[name, value]]


@pytest.mark.parametrize(
    "model, edit, arrays, match",
    [
        ("jumprelu", None, {"threshold_": np.full(64, np.nan)}, "threshold_ must be"),
        ("jumprelu", None, {"threshold_": np.full(64, -0.1)}, "threshold_ must be"),
        ("jumprelu", None, {"threshold_": np.zeros(3)}, "threshold_ must be"),
        ("jumprelu", None, {"threshold_": np.zeros(64, np.int64)}, "threshold_ must be"),
        ("topk", None, {"threshold_": np.zeros(())}, "threshold_ must be"),
        (
            "jumprelu",
            lambda c: (c["state"].pop("threshold_"), c["state"].pop("_training_units")),
            None,
            "lacks the fitted attribute threshold_, which activation='jumprelu' needs",
        ),
        # The sparsifier must fit components_, and be one a fit could make.
        ("topk", lambda c: _set_sparsifier_param(c, "k", 100), None, "_fitted_sparsifier_par"),
        ("topk", lambda c: _set_sparsifier_param(c, "k", 0), None, "_fitted_sparsifier_params"),
        ("topk", lambda c: _set_sparsifier_param(c, "k", 2.5), None, "_fitted_sparsifier_params"),
        ("jumprelu", lambda c: _set_sparsifier_param(c, "n_latents", 3), None, "_fitted_spars"),
        ("topk", lambda c: _set_sparsifier_param(c, "activation", "gelu"), None, "_fitted_spar"),
        ("topk", lambda c: _set_sparsifier_param(c, "max_iter", 3), None, "_fitted_sparsifier"),
        ("topk", lambda c: c["state"].update(input_scale_=0.0), None, "input_scale_ must be"),
        (
            "topk",
            lambda c: c["state"].update(input_scale_={"__float__": "nan"}),
            None,
            "input_scale_ must be",
        ),
        ("topk", lambda c: c["state"].update(n_iter_="3"), None, "n_iter_ must be"),
        ("topk", lambda c: c["state"].update(components_=[[1.0]]), None, "components_ must be"),
        ("topk", None, {"feature_density_": np.zeros(3)}, "feature_density_ must be"),
        (
            "jumprelu",
            lambda c: c["state"].update(
                _training_units={"__dict__": [["threshold_", c["state"]["components_"]]]}
            ),
            None,
            "_training_units must be",
        ),
        ("detector", lambda c: c["state"].update(offset_=None), None, "offset_ must be"),
        # Every entry a fit always sets, and no other: an entry named after a method or a
        # parameter would replace it.
        ("topk", lambda c: c["state"].pop("n_features_in_"), None, "lacks the fitted attrib"),
        ("detector", lambda c: c["state"].pop("offset_"), None, "lacks the fitted attributes"),
        ("topk", lambda c: c["state"].update(transform=0), None, "unknown fitted attributes"),
        ("topk", lambda c: c["state"].update(k=5), None, "unknown fitted attributes: k"),
        ("topk", lambda c: c["state"].update(offset_=0.0), None, "unknown fitted attributes"),
    ],
)
def test_a_state_no_fit_gives_is_rejected(models, tmp_path, model, edit, arrays, match):
    # Digests and all: as a crafted file, or another writer, would be.
    sksae.save(models[model], tmp_path)
    _edit_config(tmp_path, edit or (lambda config: None), arrays=arrays)
    with pytest.raises(ValueError, match=match):
        sksae.load(tmp_path)


@pytest.mark.parametrize(
    "spoil, match",
    [
        (lambda model: model.set_params(k=0), "The 'k' parameter"),
        (lambda model: model.set_params(activation="gelu"), "The 'activation' parameter"),
        (lambda model: setattr(model, "note", "layer 6"), "unknown fitted attributes: note"),
        (lambda model: setattr(model, "n_iter_", -1), "n_iter_ must be"),
    ],
)
def test_save_refuses_what_load_would_and_leaves_the_directory_as_it_was(
    models, tmp_path, spoil, match
):
    # set_params and setattr validate nothing: the file was written, over a good
    # model, and load refused it.
    model = pickle.loads(pickle.dumps(models["topk"]))
    sksae.save(model, tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    spoil(model)
    with pytest.raises(ValueError, match=match):
        sksae.save(model, tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def _moments(model, index):
    return model._trainer_state["optimizer"]["state"][index]


@pytest.mark.parametrize(
    "model, spoil, match",
    [
        ("topk", lambda m: setattr(m, "_trainer_state", {}), "must be a dict of auxk_dead"),
        (
            "topk",
            lambda m: m._trainer_state.update(steps_since_fired=np.zeros(3, np.int64)),
            "steps_since_fired must be 64 int64 step counts",
        ),
        (
            "topk",
            lambda m: _moments(m, 0).update(exp_avg=_moments(m, 0)["exp_avg"].T.copy()),
            r"parameter 0 must hold .* its shape \(64, 16\)",
        ),
        (
            "topk",
            lambda m: _moments(m, 2).update(exp_avg_sq=-_moments(m, 2)["exp_avg_sq"]),
            "parameter 2 must hold",
        ),
        (
            "topk",
            lambda m: m._trainer_state["optimizer"]["param_groups"][0].update(betas=(2.0, 3.0)),
            "one group of the 4 parameters, with a trainer's Adam options",
        ),
        # JumpReLU's thresholds are a fifth parameter, in float64 whatever the model's.
        (
            "jumprelu",
            lambda m: _moments(m, 4).update(exp_avg=_moments(m, 4)["exp_avg"].astype(np.float32)),
            r"parameter 4 must hold .* its shape \(64,\) and dtype",
        ),
        ("topk", lambda m: setattr(m, "_fit_progress", {}), "_fit_progress must be None or"),
        (
            "topk",
            lambda m: setattr(
                m,
                "_fit_progress",
                {
                    "seed": 0,
                    "n_samples": 100,
                    "epoch": 1,
                    "generator": np.zeros(16, np.uint8),
                    "schedule": {},
                    "plateau": (1.0, 0),
                },
            ),
            "_fit_progress must be None or",
        ),
    ],
)
def test_a_training_state_no_fit_gives_is_rejected(
    models, tmp_path, monkeypatch, model, spoil, match
):
    """partial_fit and a warm fit read it: they crashed on a KeyError or a shape
    mismatch, or trained on moments of another shape."""
    model = pickle.loads(pickle.dumps(models[model]))
    spoil(model)
    with pytest.raises(ValueError, match=match):
        sksae.save(model, tmp_path)
    # Written unchecked, as a crafted file, or another writer, would be.
    with monkeypatch.context() as patch:
        patch.setattr(_persistence, "_check_fitted_state", lambda *args: None)
        sksae.save(model, tmp_path)
    with pytest.raises(ValueError, match=match):
        sksae.load(tmp_path)


def test_a_training_state_no_fit_gives_trains_nothing(models, superposition_small):
    model = pickle.loads(pickle.dumps(models["topk"]))
    model._trainer_state["steps_since_fired"] = np.zeros(3, np.int64)
    before = pickle.dumps(vars(model))
    with pytest.raises(ValueError, match="This training state cannot continue the model"):
        model.partial_fit(superposition_small[0])
    assert pickle.dumps(vars(model)) == before


def test_ctrl_c_between_the_files_of_a_save_holds_until_both_are_in_place(
    models, tmp_path, monkeypatch, ctrl_c_raises
):
    # The weights were renamed into place, then Ctrl-C came before the configuration's
    # rename: neither save's pair remained, and load refused the directory.
    sksae.save(models["jumprelu"], tmp_path)
    replace = os.replace

    def interrupted_replace(source, destination):
        replace(source, destination)
        if Path(destination).name == WEIGHTS_FILE:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        sksae.save(models["topk"], tmp_path)
    _assert_same(vars(models["topk"]), vars(sksae.load(tmp_path)))
    assert sorted(path.name for path in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


def test_a_save_that_fails_to_write_leaves_no_temporary_file(models, tmp_path, monkeypatch):
    # A full disk at the configuration left the weights' temporary copy behind.
    sksae.save(models["jumprelu"], tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    write_bytes = Path.write_bytes

    def full_disk(path, data):
        if path.name == f"{CONFIG_FILE}.tmp":
            raise OSError(28, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        sksae.save(models["topk"], tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_save_into_a_file_is_a_clear_error(models, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="file exists and is not a directory"):
        sksae.save(models["topk"], tmp_path / "file")


def test_the_state_of_an_untrained_batchtopk_threshold_or_of_an_earlier_sksae_loads(tmp_path):
    # A fit on zeros keeps no positive activation: BatchTopK's threshold stays NaN.
    model = _fit(X=np.zeros((50, 4)), n_components=8, k=2, activation="batchtopk")
    assert np.isnan(model.threshold_)
    sksae.save(model, tmp_path)
    _assert_same(vars(model), vars(sksae.load(tmp_path)))
    # Entries that the first versions of sksae did not write.
    later = ["n_samples_seen_", "_fit_progress", "_training_units", "_trainer_state"]
    _edit_config(tmp_path, lambda config: [config["state"].pop(name) for name in later])
    assert not set(later) & set(vars(sksae.load(tmp_path)))


@pytest.mark.parametrize(
    "entry",
    [
        {"shape": [2.7, 3.9], "data_offsets": [0, 48]},
        {"shape": [2.0, 3.0], "data_offsets": [0, 48]},
        {"shape": ["2", "3"], "data_offsets": [0, 48]},
        {"shape": [True, 6], "data_offsets": [0, 48]},
        {"shape": [2, 3], "data_offsets": [0.0, 48.0]},
        {"shape": [2, 3], "data_offsets": [0, 24, 48]},
        {"shape": 6, "data_offsets": [0, 48]},
    ],
)
def test_a_safetensors_entry_of_non_integer_sizes_is_rejected(tmp_path, entry):
    header = json.dumps({"x": {"dtype": "F64", **entry}}).encode()
    file = tmp_path / "x.safetensors"
    file.write_bytes(len(header).to_bytes(8, "little") + header + np.arange(6.0).tobytes())
    with pytest.raises(ValueError, match=r"entry 'x' has (shape|data_offsets)="):
        _read_safetensors(file)


def test_non_finite_weights_are_rejected(models, tmp_path):
    model = pickle.loads(pickle.dumps(models["topk"]))
    sksae.save(model, tmp_path)
    model.components_[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"components_ holds NaN .* to save"):
        sksae.save(model, tmp_path)
    _edit_config(tmp_path, lambda config: None, arrays={"components_": model.components_})
    with pytest.raises(ValueError, match="components_ holds NaN"):
        sksae.load(tmp_path)


def test_half_precision_weights_are_rejected(models, tmp_path):
    """No fit gives them, and partial_fit then blamed the data for float16's range."""
    model = models["topk"]
    sksae.save(model, tmp_path)
    names = ["components_", "encoder_weights_", "encoder_bias_", "decoder_bias_"]
    halved = {name: getattr(model, name).astype(np.float16) for name in names}
    _edit_config(tmp_path, lambda config: None, arrays=halved)
    with pytest.raises(ValueError, match=r"components_ must be float32 or float64 in .* float16"):
        sksae.load(tmp_path)


def test_numpy_scalar_parameters_are_saved_as_numbers(superposition_small, tmp_path):
    # As a grid built with np.arange or np.logspace hands them to set_params.
    X = superposition_small[0]
    params = dict(n_components=np.int64(32), k=np.int64(2), learning_rate=np.float32(1e-3))
    model = _fit(X=X, random_state=np.int64(3), **params)
    sksae.save(model, tmp_path)
    loaded = sksae.load(tmp_path)
    assert loaded.get_params() == model.get_params()
    assert type(loaded.n_components) is int and loaded.random_state == 3
    # What JSON cannot hold is no valid parameter, and an earlier save in the directory
    # stays whole.
    with pytest.raises(TypeError, match=r"'device' parameter .* Got device"):
        sksae.save(model.set_params(device=torch.device("cpu")), tmp_path)
    with pytest.raises(ValueError, match=r"'tol' parameter .* Got inf"):
        sksae.save(model.set_params(device="cpu", tol=np.inf), tmp_path)
    assert sksae.load(tmp_path).get_params() == model.set_params(tol=1e-3).get_params()


def test_non_finite_numbers_are_saved_as_standard_json(tmp_path):
    # Rows all the same: every validation score is NaN.
    model = _fit(X=np.ones((100, 4)), early_stopping=True, max_no_improvement=None)
    model.dead_fraction_ = np.nan  # as for a model imported from a research checkpoint
    assert np.isnan(model.best_validation_score_)
    sksae.save(model, tmp_path)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    json.loads((tmp_path / CONFIG_FILE).read_text(), parse_constant=refuse)
    loaded = sksae.load(tmp_path)
    _assert_same(vars(model), vars(loaded))


def test_only_fitted_sksae_estimators_are_saved(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        sksae.save(SparseAutoencoderTransformer(), tmp_path)
    from sklearn.decomposition import PCA

    with pytest.raises(TypeError, match="save takes a fitted"):
        sksae.save(PCA(), tmp_path)


def test_bfloat16_arrays_of_research_checkpoints_read_as_float32(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    weights = torch.randn(3, 4).to(torch.bfloat16)
    safetensors_torch.save_file({"w": weights}, str(tmp_path / "w.safetensors"))
    array = _read_safetensors(tmp_path / "w.safetensors")["w"]
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, weights.float().numpy())
