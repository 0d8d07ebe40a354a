"""load_external / export: the checkpoints of sparsify, SAELens and dictionary_learning.

Each test writes a small checkpoint in a library's layout (its file names, key names,
shapes and configuration entries), loads it, and compares the estimator with a
plain-numpy transcription of that library's encoder and decoder, written here from the
library's source and independent of sksae's mapping. The libraries are not imported.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from sksae import SparseAutoencoderTransformer, _external
from sksae._external import export, load_external
from sksae._persistence import _safetensors_bytes
from sksae.datasets import make_sparse_superposition

D_IN, N_LATENTS, K = 12, 40, 4
#: Tolerances of the codes and reconstructions of float32 checkpoints, against a float64
#: transcription: in float64 they measure the mapping (folding b_dec or norms into float32
#: weights rounds them); in float32 the arithmetic's own rounding adds about 1e-6.
TOLERANCE = {np.float64: 1e-6, np.float32: 1e-5}


# ---------------------------------------------------------------------------- references


def _relu(a):
    return np.maximum(a, 0.0)


def _keep_top_k(values, k):
    """The ``k`` largest entries of each row (``torch.topk``), zeros elsewhere."""
    indices = np.argsort(-values, axis=1, kind="stable")[:, :k]
    kept = np.zeros_like(values)
    np.put_along_axis(kept, indices, np.take_along_axis(values, indices, axis=1), axis=1)
    return kept


def _as64(weights):
    return {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}


def _sparsify_reference(w, k):
    """sparsify/sparse_coder.py + fused_encoder.py: ``relu(F.linear(x - b_dec, W, b))``,
    ``topk``; decode ``embedding_bag(top_indices, W_dec, per_sample_weights=top_acts)
    + b_dec``."""
    w = _as64(w)

    def encode(x):
        pre = _relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
        top_indices = np.argsort(-pre, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(pre, top_indices, axis=1), top_indices

    def decode(top_acts, top_indices):
        return np.einsum("bk,bkd->bd", top_acts, w["W_dec"][top_indices]) + w["b_dec"]

    def dense(top_acts, top_indices):
        codes = np.zeros((top_acts.shape[0], N_LATENTS))
        np.put_along_axis(codes, top_indices, top_acts, axis=1)
        return codes

    return (lambda x: dense(*encode(x))), (lambda x: decode(*encode(x)))


def _saelens_reference(w, *, kind, k=None, apply_b_dec_to_input=True, rescale=False):
    """SAELens saes/*.py (v6) and sae.py (v5): ``hidden_pre = (x - b_dec * apply) @ W_enc
    + b_enc``; standard: ReLU; jumprelu: ``relu(h) * (h > threshold)``; topk: TopK then
    ReLU, on ``h * ||W_dec||`` when rescaled; decode ``(f [/ ||W_dec||] [* scale]) @ W_dec
    + b_dec``."""
    w = _as64(w)
    if "log_threshold" in w:
        w["threshold"] = np.exp(w["log_threshold"])
    norms = np.linalg.norm(w["W_dec"], axis=-1)

    def encode(x):
        hidden_pre = (x - w["b_dec"] * apply_b_dec_to_input) @ w["W_enc"] + w["b_enc"]
        if kind == "relu":
            return _relu(hidden_pre)
        if kind == "jumprelu":
            return _relu(hidden_pre) * (hidden_pre > w["threshold"])
        if rescale:
            hidden_pre = hidden_pre * norms
        return _relu(_keep_top_k(hidden_pre, k))

    def decode(x):
        features = encode(x)
        if rescale:
            features = features / norms
        if "scaling_factor" in w:
            features = features * w["scaling_factor"]
        return features @ w["W_dec"] + w["b_dec"]

    return encode, decode


def _dictionary_learning_reference(dict_class, state):
    """dictionary_learning dictionary.py and trainers/*.py, as ``load_dictionary`` loads
    them (``AutoEncoder.from_pretrained`` normalises the decoder columns)."""
    w = _as64({name: tensor.numpy() for name, tensor in state.items()})
    if dict_class == "AutoEncoder":
        norms = np.linalg.norm(w["decoder.weight"], axis=0)
        if not np.allclose(norms, 1):
            w["decoder.weight"] = w["decoder.weight"] / norms
            w["encoder.weight"] = w["encoder.weight"] * norms[:, None]
            w["encoder.bias"] = w["encoder.bias"] * norms

    def encode(x):
        if dict_class == "AutoEncoder":
            return _relu((x - w["bias"]) @ w["encoder.weight"].T + w["encoder.bias"])
        if dict_class == "AutoEncoderNew":
            return _relu(x @ w["encoder.weight"].T + w["encoder.bias"])
        if dict_class == "JumpReluAutoEncoder":
            pre_jump = x @ w["W_enc"] + w["b_enc"]
            return _relu(pre_jump * (pre_jump > w["threshold"]))
        if dict_class == "MatryoshkaBatchTopKSAE":
            post_relu = _relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        else:
            post_relu = _relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
        if dict_class == "AutoEncoderTopK":
            return _keep_top_k(post_relu, int(w["k"]))
        return post_relu * (post_relu > w["threshold"])

    def decode(x):
        f = encode(x)
        if dict_class == "AutoEncoder":
            return f @ w["decoder.weight"].T + w["bias"]
        if dict_class == "AutoEncoderNew":
            return f @ w["decoder.weight"].T + w["decoder.bias"]
        if "W_dec" in w:
            return f @ w["W_dec"] + w["b_dec"]
        return f @ w["decoder.weight"].T + w["b_dec"]

    return encode, decode


def _assert_matches(model, X, encode, decode):
    expected_codes, expected_reconstruction = encode(X), decode(X)
    # The checkpoint must exercise the sparsifier: some latents fire, others do not.
    assert 0 < np.count_nonzero(expected_codes) < expected_codes.size
    for dtype, tolerance in TOLERANCE.items():
        codes = model.transform(X.astype(dtype))
        assert codes.dtype == dtype
        np.testing.assert_allclose(codes, expected_codes, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(
            model.inverse_transform(codes),
            expected_reconstruction,
            rtol=tolerance,
            atol=tolerance,
        )


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(autouse=True)
def fold_in_blocks(monkeypatch):
    """Fold 7 of the 40 latent rows at a time (the last block 5): every checkpoint here
    goes through several blocks, as one of gigabytes does."""
    monkeypatch.setattr(_external, "_FOLD_BLOCK_ELEMENTS", 7 * D_IN)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def X(rng):
    return rng.normal(size=(64, D_IN)) + 0.3


def _matrix(rng, shape):
    return (rng.normal(size=shape) / np.sqrt(D_IN)).astype(np.float32)


def _vector(rng, size, scale=0.3):
    return (scale * rng.normal(size=size)).astype(np.float32)


def _write_json(path, content):
    path.write_text(json.dumps(content))


def _sparsify_checkpoint(directory, rng, **cfg):
    """sparsify's ``save_to_disk``: ``cfg.json`` (SparseCoderConfig + d_in) and
    ``sae.safetensors``. Returns the weights."""
    directory.mkdir(exist_ok=True)
    weights = {
        "encoder.weight": _matrix(rng, (N_LATENTS, D_IN)),
        "encoder.bias": _vector(rng, N_LATENTS, 0.1),
        "W_dec": _matrix(rng, (N_LATENTS, D_IN)),
        "b_dec": _vector(rng, D_IN),
    }
    _write_json(
        directory / "cfg.json",
        {
            "activation": "topk",
            "expansion_factor": 32,
            "normalize_decoder": True,
            "num_latents": N_LATENTS,
            "k": K,
            "multi_topk": False,
            "skip_connection": False,
            "transcode": False,
            "d_in": D_IN,
            **cfg,
        },
    )
    (directory / "sae.safetensors").write_bytes(_safetensors_bytes(weights))
    return weights


#: SAELens configurations: v6 (``architecture``, ``k``, ``metadata``) and v5
#: (``activation_fn_str``, ``activation_fn_kwargs``, ``finetuning_scaling_factor``).
_SAELENS_V6 = {
    "d_in": D_IN,
    "d_sae": N_LATENTS,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {"sae_lens_version": "6.18.0", "hook_name": "blocks.3.hook_resid_post"},
}
_SAELENS_V5 = {
    "architecture": "standard",
    "d_in": D_IN,
    "d_sae": N_LATENTS,
    "activation_fn_str": "relu",
    "activation_fn_kwargs": {},
    "apply_b_dec_to_input": True,
    "finetuning_scaling_factor": False,
    "normalize_activations": "none",
    "dtype": "float32",
    "device": "cpu",
    "hook_name": "blocks.3.hook_resid_post",
    "sae_lens_training_version": "5.11.0",
}

# id: (configuration, extra arrays, reference keyword arguments)
SAELENS_CASES = {
    "standard": ({**_SAELENS_V6, "architecture": "standard"}, (), {"kind": "relu"}),
    "standard-no-b_dec-on-input": (
        {**_SAELENS_V6, "architecture": "standard", "apply_b_dec_to_input": False},
        (),
        {"kind": "relu", "apply_b_dec_to_input": False},
    ),
    "topk": ({**_SAELENS_V6, "architecture": "topk", "k": K}, (), {"kind": "topk", "k": K}),
    "topk-rescaled": (
        {**_SAELENS_V6, "architecture": "topk", "k": K, "rescale_acts_by_decoder_norm": True},
        (),
        {"kind": "topk", "k": K, "rescale": True},
    ),
    "jumprelu": ({**_SAELENS_V6, "architecture": "jumprelu"}, ("threshold",), {"kind": "jumprelu"}),
    "jumprelu-no-b_dec-on-input": (
        {**_SAELENS_V6, "architecture": "jumprelu", "apply_b_dec_to_input": False},
        ("threshold",),
        {"kind": "jumprelu", "apply_b_dec_to_input": False},
    ),
    "v5-relu": (_SAELENS_V5, (), {"kind": "relu"}),
    "v5-topk": (
        {**_SAELENS_V5, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}},
        (),
        {"kind": "topk", "k": K},
    ),
    "v5-jumprelu-log_threshold": (
        {**_SAELENS_V5, "architecture": "jumprelu"},
        ("log_threshold",),
        {"kind": "jumprelu"},
    ),
    "v5-finetuning-scale": (
        {**_SAELENS_V5, "finetuning_scaling_factor": True},
        ("scaling_factor",),
        {"kind": "relu"},
    ),
}


def _saelens_checkpoint(directory, rng, cfg, extra=()):
    """SAELens's ``save_model``: ``cfg.json`` and ``sae_weights.safetensors``."""
    directory.mkdir(exist_ok=True)
    weights = {
        "W_enc": _matrix(rng, (D_IN, N_LATENTS)),
        "b_enc": _vector(rng, N_LATENTS, 0.1),
        # Rows of uneven norms, which matter to rescale_acts_by_decoder_norm.
        "W_dec": (_matrix(rng, (N_LATENTS, D_IN)) * rng.uniform(0.5, 3, (N_LATENTS, 1))).astype(
            np.float32
        ),
        "b_dec": _vector(rng, D_IN),
    }
    # Some thresholds below 0: the libraries' ReLU makes them act as 0.
    random_arrays = {
        "threshold": lambda: rng.uniform(-0.2, 0.8, N_LATENTS),
        "log_threshold": lambda: np.log(rng.uniform(0.05, 0.8, N_LATENTS)),
        "scaling_factor": lambda: rng.uniform(0.5, 2, N_LATENTS),
    }
    weights.update({name: random_arrays[name]().astype(np.float32) for name in extra})
    _write_json(directory / "cfg.json", cfg)
    (directory / "sae_weights.safetensors").write_bytes(_safetensors_bytes(weights))
    return weights


# id: (dict_class, extra trainer entries)
DICTIONARY_CASES = {
    "AutoEncoder": ("AutoEncoder", {}),
    "AutoEncoder-unit-decoder": ("AutoEncoder", {}),
    "AutoEncoderNew": ("AutoEncoderNew", {}),
    "AutoEncoderTopK": ("AutoEncoderTopK", {"k": K}),
    "BatchTopKSAE": ("BatchTopKSAE", {"k": K}),
    "BatchTopKSAE-untrained-threshold": ("BatchTopKSAE", {"k": K}),
    "MatryoshkaBatchTopKSAE": ("MatryoshkaBatchTopKSAE", {"k": K}),
    "JumpReluAutoEncoder": ("JumpReluAutoEncoder", {}),
}


def _dictionary_learning_checkpoint(directory, rng, case, trainer=None):
    """``trainSAE``'s output: ``config.json`` (``{"trainer": trainer.config}``) and
    ``ae.pt``, the ``torch.save`` of the dictionary's state dict. Returns the state."""
    dict_class, entries = DICTIONARY_CASES[case]
    directory.mkdir(exist_ok=True)
    encoder, decoder = _matrix(rng, (N_LATENTS, D_IN)), _matrix(rng, (D_IN, N_LATENTS))
    encoder_bias, decoder_bias = _vector(rng, N_LATENTS, 0.1), _vector(rng, D_IN)
    if case == "AutoEncoder-unit-decoder":
        decoder = (decoder / np.linalg.norm(decoder, axis=0)).astype(np.float32)
    arrays = {
        "AutoEncoder": {
            "bias": decoder_bias,
            "encoder.weight": encoder,
            "encoder.bias": encoder_bias,
            "decoder.weight": decoder,
        },
        "AutoEncoderNew": {
            "encoder.weight": encoder,
            "encoder.bias": encoder_bias,
            "decoder.weight": decoder,
            "decoder.bias": decoder_bias,
        },
        "AutoEncoderTopK": {
            "k": np.array(K, dtype=np.int32),
            "threshold": np.array(0.3, dtype=np.float32),
            "decoder.weight": decoder,
            "encoder.weight": encoder,
            "encoder.bias": encoder_bias,
            "b_dec": decoder_bias,
        },
        "MatryoshkaBatchTopKSAE": {
            "k": np.array(K, dtype=np.int32),
            "threshold": np.array(0.3, dtype=np.float32),
            "group_sizes": np.array([10, 30]),
            "W_enc": encoder.T.copy(),
            "b_enc": encoder_bias,
            "W_dec": decoder.T.copy(),
            "b_dec": decoder_bias,
        },
        "JumpReluAutoEncoder": {
            "W_enc": encoder.T.copy(),
            "b_enc": encoder_bias,
            "W_dec": decoder.T.copy(),
            "b_dec": decoder_bias,
            "threshold": rng.uniform(-0.2, 0.8, N_LATENTS).astype(np.float32),
        },
    }
    arrays["BatchTopKSAE"] = dict(arrays["AutoEncoderTopK"])
    if case == "BatchTopKSAE-untrained-threshold":
        arrays["BatchTopKSAE"]["threshold"] = np.array(-1.0, dtype=np.float32)
    state = {
        name: torch.from_numpy(np.asarray(value)) for name, value in arrays[dict_class].items()
    }
    config = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D_IN,
            "dict_size": N_LATENTS,
            "lr": 1e-4,
            "layer": 3,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            **entries,
            **(trainer or {}),
        },
        "buffer": {"d_submodule": D_IN, "io": "out"},
    }
    _write_json(directory / "config.json", config)
    torch.save(state, directory / "ae.pt")
    return dict_class, state


# ---------------------------------------------------------------------------- equivalence


def test_sparsify_matches_its_encoder_and_decoder(tmp_path, rng, X):
    weights = _sparsify_checkpoint(tmp_path, rng)
    model = load_external(tmp_path, "sparsify")
    assert (model.activation, model.k, model.n_components) == ("topk", K, N_LATENTS)
    assert model.components_.dtype == np.float32
    _assert_matches(model, X, *_sparsify_reference(weights, K))


@pytest.mark.parametrize("case", SAELENS_CASES)
def test_saelens_matches_its_encoder_and_decoder(tmp_path, rng, X, case):
    cfg, extra, reference = SAELENS_CASES[case]
    weights = _saelens_checkpoint(tmp_path, rng, cfg, extra)
    model = load_external(str(tmp_path), "saelens")
    assert model.activation == reference["kind"]
    _assert_matches(model, X, *_saelens_reference(weights, **reference))


@pytest.mark.parametrize("case", DICTIONARY_CASES)
def test_dictionary_learning_matches_its_encoder_and_decoder(tmp_path, rng, X, case):
    dict_class, state = _dictionary_learning_checkpoint(tmp_path, rng, case)
    model = load_external(tmp_path, "dictionary_learning")
    assert model.components_.dtype == np.float32
    _assert_matches(model, X, *_dictionary_learning_reference(dict_class, state))


def test_a_dictionary_learning_state_dict_of_shared_tensors_loads(tmp_path, rng, X):
    """Tied weights (the encoder saved as a view of the decoder) and a bias expanded
    from one value: torch.save keeps the sharing, and rescaling to unit-norm decoder
    columns must not write through one tensor into another."""
    dict_class, state = _dictionary_learning_checkpoint(tmp_path, rng, "AutoEncoder")
    state["encoder.weight"] = state["decoder.weight"].T
    state["encoder.bias"] = torch.full((1,), 0.05).expand(N_LATENTS)
    torch.save(state, tmp_path / "ae.pt")
    model = load_external(tmp_path, "dictionary_learning")
    _assert_matches(model, X, *_dictionary_learning_reference(dict_class, state))


@pytest.mark.parametrize(
    "format, write",
    [
        # Each folds something into the weights: b_dec into b_enc, and the decoder norms.
        (
            "saelens",
            lambda directory, rng: _saelens_checkpoint(
                directory,
                rng,
                {
                    **SAELENS_CASES["topk-rescaled"][0],
                    "d_in": D_IN,
                    "d_sae": N_LATENTS,
                    "apply_b_dec_to_input": False,
                },
            ),
        ),
        ("sparsify", _sparsify_checkpoint),
        (
            "dictionary_learning",
            lambda d, rng: _dictionary_learning_checkpoint(d, rng, "AutoEncoder"),
        ),
    ],
)
def test_a_large_checkpoint_loads_in_about_twice_its_size(
    tmp_path, rng, monkeypatch, peak_memory, format, write
):
    # The file read beside its arrays, then the arrays beside the estimator's: folding
    # in float64 a block of rows at a time adds little (it held 5 times the weights).
    monkeypatch.setitem(globals(), "D_IN", 256)
    monkeypatch.setitem(globals(), "N_LATENTS", 8192)
    monkeypatch.setattr(_external, "_FOLD_BLOCK_ELEMENTS", 64 * D_IN)
    write(tmp_path, rng)
    load_external(tmp_path, format)  # what a first call sets up does not count
    model, peak = peak_memory(lambda: load_external(tmp_path, format))
    weights = model.components_.nbytes + model.encoder_weights_.nbytes
    assert model.components_.flags.c_contiguous and model.encoder_weights_.flags.c_contiguous
    assert peak < 2.5 * weights


@pytest.mark.parametrize(
    ("format", "write"),
    [
        ("sparsify", lambda path, rng: _sparsify_checkpoint(path, rng)),
        (
            "saelens",
            lambda path, rng: _saelens_checkpoint(
                path, rng, {**_SAELENS_V6, "architecture": "jumprelu"}, ("threshold",)
            ),
        ),
        (
            "dictionary_learning",
            lambda path, rng: _dictionary_learning_checkpoint(path, rng, "BatchTopKSAE"),
        ),
    ],
    ids=["topk", "jumprelu", "batchtopk"],
)
def test_loaded_model_trains_further(tmp_path, rng, format, write):
    write(tmp_path, rng)
    model = load_external(tmp_path, format)
    components = model.components_.copy()
    X = rng.normal(size=(300, D_IN)).astype(np.float32)
    # Training keeps the decoder rows at unit norm, which these random ones are not.
    # JumpReLU's thresholds follow their norms into the encoder; TopK's selection cannot.
    if format == "saelens":
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.partial_fit(X)
    else:
        with pytest.warns(UserWarning, match="training rescales them first") as record:
            model.partial_fit(X)
        assert record[0].filename == __file__
    assert (model.n_iter_, len(model.loss_curve_), model.n_samples_seen_) == (1, 1, 300)
    assert model.n_steps_ > 0 and not np.array_equal(model.components_, components)
    assert np.isfinite(model.transform(X)).all()


# ---------------------------------------------------------------------------- export


@pytest.fixture(scope="module", params=[np.float64, np.float32], ids=["float64", "float32"])
def fitted(request):
    X = make_sparse_superposition(
        n_samples=500, n_features=12, n_sources=24, n_active=2, random_state=0
    ).astype(request.param)
    model = SparseAutoencoderTransformer(n_components=40, k=4, max_iter=3, random_state=0)
    return model.fit(X), X


def test_export_round_trip(tmp_path, fitted):
    model, X = fitted
    export(model, tmp_path / "sae")
    assert sorted(path.name for path in (tmp_path / "sae").iterdir()) == [
        "cfg.json",
        "sae.safetensors",
    ]
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg == {
        "activation": "topk",
        "expansion_factor": 3,
        "normalize_decoder": True,
        "num_latents": 40,
        "k": 4,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": 12,
    }
    loaded = load_external(tmp_path / "sae", "sparsify")
    for name in ["components_", "encoder_weights_", "encoder_bias_", "decoder_bias_"]:
        original, read = getattr(model, name), getattr(loaded, name)
        assert read.dtype == original.dtype == X.dtype and read.tobytes() == original.tobytes()
    codes = loaded.transform(X)
    assert np.array_equal(codes, model.transform(X))
    assert np.array_equal(loaded.inverse_transform(codes), model.inverse_transform(codes))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_a_half_precision_sparsify_checkpoint_loads_its_weights_exactly_with_a_warning(
    tmp_path, rng, half
):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    weights = _sparsify_checkpoint(tmp_path, rng)
    tensors = {name: torch.from_numpy(array).to(half) for name, array in weights.items()}
    safetensors_torch.save_file(tensors, tmp_path / "sae.safetensors")
    name = str(half).removeprefix("torch.")
    # sparsify computes such a file in half precision; sksae in float32, and says so.
    with pytest.warns(UserWarning, match=f"sparsify computes this checkpoint in {name}"):
        model = load_external(tmp_path, "sparsify")
    assert model.components_.dtype == np.float32
    np.testing.assert_array_equal(model.components_, tensors["W_dec"].float().numpy())


def test_a_sparsify_checkpoint_is_computed_in_the_dtype_of_its_decoder(tmp_path, rng):
    """sparsify builds its module in W_dec's dtype and casts the other tensors into it."""
    weights = _sparsify_checkpoint(tmp_path, rng)
    tensors = {name: torch.from_numpy(array) for name, array in weights.items()}
    tensors["W_dec"] = tensors["W_dec"].half()
    (tmp_path / "sae.safetensors").write_bytes(
        _safetensors_bytes({name: tensor.numpy() for name, tensor in tensors.items()})
    )
    with pytest.warns(UserWarning, match="sparsify computes this checkpoint in float16"):
        model = load_external(tmp_path, "sparsify")
    np.testing.assert_array_equal(
        model.encoder_weights_, tensors["encoder.weight"].half().float().numpy()
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "torch.float16"])
def test_a_half_precision_saelens_configuration_rounds_the_weights_as_saelens_does(
    tmp_path, rng, dtype
):
    cfg = {**_SAELENS_V6, "architecture": "standard", "dtype": dtype}
    weights = _saelens_checkpoint(tmp_path, rng, cfg)  # float32 weights
    with pytest.warns(UserWarning, match="SAELens computes this checkpoint in"):
        model = load_external(tmp_path, "saelens")
    half = getattr(torch, dtype.removeprefix("torch."))
    rounded = torch.from_numpy(weights["W_dec"]).to(half).float().numpy()
    assert model.components_.dtype == np.float32
    np.testing.assert_array_equal(model.components_, rounded)
    # SAELens takes exp(log_threshold) in half precision too: sksae's was float32's.
    cfg = {**cfg, "architecture": "jumprelu"}
    weights = _saelens_checkpoint(tmp_path, rng, cfg, ("log_threshold",))
    with pytest.warns(UserWarning, match="SAELens computes this checkpoint in"):
        model = load_external(tmp_path, "saelens")
    threshold = torch.from_numpy(weights["log_threshold"]).to(half).exp().float().numpy()
    np.testing.assert_array_equal(model.threshold_, threshold)


def test_training_folds_the_decoder_norms_of_a_checkpoint_into_its_encoder(tmp_path, rng):
    # SAELens's JumpReLU rows need not be unit norm; moved into the encoder rows, biases
    # and thresholds, their norms leave the model as it was: a step at a negligible
    # learning rate changes no reconstruction.
    _saelens_checkpoint(tmp_path, rng, {**_SAELENS_V6, "architecture": "jumprelu"}, ("threshold",))
    model = load_external(tmp_path, "saelens")
    assert np.ptp(np.linalg.norm(model.components_, axis=1)) > 1
    X = rng.normal(size=(64, D_IN)).astype(np.float32)
    before = model.inverse_transform(model.transform(X))
    model.set_params(learning_rate=1e-12).partial_fit(X)
    np.testing.assert_allclose(np.linalg.norm(model.components_, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(model.inverse_transform(model.transform(X)), before, atol=1e-4)


def test_export_of_a_k_from_a_parameter_grid(tmp_path, fitted):
    """GridSearchCV's best_estimator_ has the grid's numpy integer k."""
    _, X = fitted
    grid_model = SparseAutoencoderTransformer(
        n_components=40, k=np.arange(4, 5)[0], max_iter=1, random_state=0
    ).fit(X)
    export(grid_model, tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["k"] == 4


def test_export_of_a_model_trained_on_scaled_data(tmp_path, fitted):
    # normalize_input's scale is folded into the fitted weights: nothing else to write.
    _, X = fitted
    model = SparseAutoencoderTransformer(
        n_components=40, k=4, max_iter=2, normalize_input="mean_norm", random_state=0
    ).fit(X * 10)
    assert model.input_scale_ != 1.0
    export(model, tmp_path)
    loaded = load_external(tmp_path, "sparsify")
    assert np.array_equal(loaded.transform(X * 10), model.transform(X * 10))


def test_export_writes_sparsify_keys_and_shapes(tmp_path, fitted):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    model, _ = fitted
    export(model, tmp_path)
    tensors = safetensors_numpy.load_file(tmp_path / "sae.safetensors")
    assert {name: (array.shape, array.dtype) for name, array in tensors.items()} == {
        "encoder.weight": ((40, 12), model.components_.dtype),
        "encoder.bias": ((40,), model.components_.dtype),
        "W_dec": ((40, 12), model.components_.dtype),
        "b_dec": ((12,), model.components_.dtype),
    }
    assert np.array_equal(tensors["encoder.weight"], model.encoder_weights_)
    assert np.array_equal(tensors["W_dec"], model.components_)


def test_export_rejects_what_sparsify_cannot_hold(tmp_path, rng, fitted):
    with pytest.raises(ValueError, match="writes 'sparsify'"):
        export(fitted[0], tmp_path, format="saelens")
    with pytest.raises(TypeError, match="SparseAutoencoderTransformer"):
        export("model", tmp_path)
    with pytest.raises(NotFittedError):
        export(SparseAutoencoderTransformer(), tmp_path)
    _saelens_checkpoint(tmp_path / "relu", rng, {**_SAELENS_V6, "architecture": "standard"})
    relu = load_external(tmp_path / "relu", "saelens")
    with pytest.raises(ValueError, match="activation='relu'"):
        export(relu, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("cfg", "feature"),
    [
        ({"activation": "groupmax"}, "groupmax"),
        ({"skip_connection": True}, "skip connection"),
        ({"transcode": True}, "transcoder"),
    ],
)
def test_sparsify_unsupported_features(tmp_path, rng, cfg, feature):
    _sparsify_checkpoint(tmp_path, rng, **cfg)
    with pytest.raises(ValueError, match="cannot represent") as info:
        load_external(tmp_path, "sparsify")
    assert feature in str(info.value) and "cfg.json" in str(info.value)


@pytest.mark.parametrize(
    ("cfg", "feature"),
    [
        ({**_SAELENS_V6, "architecture": "gated"}, "gated"),
        ({**_SAELENS_V6, "architecture": "jumprelu_transcoder"}, "jumprelu_transcoder"),
        (
            {**_SAELENS_V6, "architecture": "standard", "normalize_activations": "layer_norm"},
            "layer_norm",
        ),
        (
            {
                **_SAELENS_V6,
                "architecture": "topk",
                "k": K,
                "normalize_activations": "constant_norm_rescale",
            },
            "constant_norm_rescale",
        ),
        ({**_SAELENS_V5, "normalize_activations": "expected_average_only_in"}, "expected_average"),
        ({**_SAELENS_V5, "normalize_activations": True}, "normalize_activations=True"),
        ({**_SAELENS_V5, "activation_fn_str": "tanh-relu"}, "tanh-relu"),
    ],
)
def test_saelens_unsupported_features(tmp_path, rng, cfg, feature):
    _saelens_checkpoint(tmp_path, rng, cfg)
    with pytest.raises(ValueError, match="cannot represent") as info:
        load_external(tmp_path, "saelens")
    assert feature in str(info.value) and "cfg.json" in str(info.value)


@pytest.mark.parametrize(
    ("dict_class", "feature"),
    [("GatedAutoEncoder", "gated SAE"), ("IdentityDict", "dict_class='IdentityDict'")],
)
def test_dictionary_learning_unsupported_classes(tmp_path, rng, dict_class, feature):
    _dictionary_learning_checkpoint(tmp_path, rng, "AutoEncoder", {"dict_class": dict_class})
    with pytest.raises(ValueError, match="cannot represent") as info:
        load_external(tmp_path, "dictionary_learning")
    assert feature in str(info.value) and "config.json" in str(info.value)


def test_missing_directory_files_and_unknown_format(tmp_path, rng):
    with pytest.raises(ValueError, match="format='sklearn' is not supported"):
        load_external(tmp_path, "sklearn")
    with pytest.raises(ValueError, match="is not a directory"):
        load_external(tmp_path / "nowhere", "sparsify")
    _sparsify_checkpoint(tmp_path / "a", rng)
    (tmp_path / "a" / "cfg.json").unlink()
    with pytest.raises(ValueError, match=r"cfg\.json is missing"):
        load_external(tmp_path / "a", "sparsify")
    _saelens_checkpoint(tmp_path / "b", rng, {**_SAELENS_V6, "architecture": "standard"})
    (tmp_path / "b" / "sae_weights.safetensors").unlink()
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors is missing"):
        load_external(tmp_path / "b", "saelens")
    _dictionary_learning_checkpoint(tmp_path / "c", rng, "AutoEncoder")
    (tmp_path / "c" / "ae.pt").unlink()
    with pytest.raises(ValueError, match=r"ae\.pt is missing"):
        load_external(tmp_path / "c", "dictionary_learning")


def test_missing_unexpected_and_misshapen_arrays(tmp_path, rng):
    weights = _sparsify_checkpoint(tmp_path, rng)
    safetensors_file = tmp_path / "sae.safetensors"
    safetensors_file.write_bytes(
        _safetensors_bytes({name: value for name, value in weights.items() if name != "b_dec"})
    )
    with pytest.raises(ValueError, match=r"lacks the arrays \['b_dec'\]"):
        load_external(tmp_path, "sparsify")
    skip = np.zeros((D_IN, D_IN), dtype=np.float32)
    safetensors_file.write_bytes(_safetensors_bytes({**weights, "W_skip": skip}))
    with pytest.raises(ValueError, match=r"does not know how to map: \['W_skip'\]"):
        load_external(tmp_path, "sparsify")
    safetensors_file.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_external(tmp_path, "sparsify")

    # W_enc stored [d_sae, d_in], as sksae and sparsify lay it out, not SAELens.
    weights = _saelens_checkpoint(
        tmp_path / "saelens", rng, {**_SAELENS_V6, "architecture": "standard"}
    )
    (tmp_path / "saelens" / "sae_weights.safetensors").write_bytes(
        _safetensors_bytes({**weights, "W_enc": np.ascontiguousarray(weights["W_enc"].T)})
    )
    with pytest.raises(ValueError, match=r"W_enc has shape \(40, 12\), expected \(12, 40\)"):
        load_external(tmp_path / "saelens", "saelens")

    # The configuration's sizes must be those of the arrays.
    _dictionary_learning_checkpoint(tmp_path / "dl", rng, "JumpReluAutoEncoder", {"dict_size": 41})
    with pytest.raises(ValueError, match=r"W_enc has shape \(12, 40\), expected \(12, 41\)"):
        load_external(tmp_path / "dl", "dictionary_learning")


@pytest.mark.parametrize(
    ("format", "write", "message"),
    [
        ("saelens", {"architecture": ["topk"]}, r"architecture=\['topk'\] is not a string"),
        ("saelens", {"activation_fn_str": 1}, "activation_fn_str=1 is not a string"),
        (
            "saelens",
            {"architecture": "topk", "activation_fn_kwargs": [4]},
            r"activation_fn_kwargs=\[4\] is not an object",
        ),
        ("saelens", {"dtype": "float8_e4m3fn"}, "dtype='float8_e4m3fn' is none of the dtypes"),
        ("saelens", {"dtype": None}, "dtype=None is not a string"),
        ("dictionary_learning", {"dict_class": ["AutoEncoder"]}, "cannot represent"),
        ("dictionary_learning", {"dict_class": None}, "lacks the entry 'dict_class'"),
    ],
)
def test_malformed_configurations(tmp_path, rng, format, write, message):
    if format == "saelens":
        _saelens_checkpoint(tmp_path, rng, {**_SAELENS_V5, **write})
    else:
        _dictionary_learning_checkpoint(tmp_path, rng, "AutoEncoder", write)
        if write["dict_class"] is None:
            config = json.loads((tmp_path / "config.json").read_text())
            del config["trainer"]["dict_class"]
            _write_json(tmp_path / "config.json", config)
    with pytest.raises(ValueError, match=message):
        load_external(tmp_path, format)


def test_malformed_files(tmp_path, rng):
    weights = _sparsify_checkpoint(tmp_path / "a", rng)
    integers = {**weights, "W_dec": weights["W_dec"].astype(np.int64)}
    (tmp_path / "a" / "sae.safetensors").write_bytes(_safetensors_bytes(integers))
    with pytest.raises(ValueError, match=r"not floating point: \{'W_dec': 'I64'\}"):
        load_external(tmp_path / "a", "sparsify")
    (tmp_path / "a" / "cfg.json").unlink()
    (tmp_path / "a" / "cfg.json").mkdir()
    with pytest.raises(ValueError, match=r"cfg\.json cannot be read"):
        load_external(tmp_path / "a", "sparsify")

    _dictionary_learning_checkpoint(tmp_path / "b", rng, "MatryoshkaBatchTopKSAE", {"k": K})
    state = torch.load(tmp_path / "b" / "ae.pt", weights_only=True)
    for group_sizes in [[N_LATENTS - 1], [N_LATENTS + 4, -4], [[N_LATENTS]]]:
        state["group_sizes"] = torch.tensor(group_sizes)
        torch.save(state, tmp_path / "b" / "ae.pt")
        with pytest.raises(ValueError, match="not positive integers summing to dict_size=40"):
            load_external(tmp_path / "b", "dictionary_learning")
    state["group_sizes"] = torch.tensor([0.5] * 80)
    torch.save(state, tmp_path / "b" / "ae.pt")
    with pytest.raises(ValueError, match="not positive integers"):
        load_external(tmp_path / "b", "dictionary_learning")

    # A corrupted ae.pt is a ValueError, whatever part of torch.load it breaks.
    _dictionary_learning_checkpoint(tmp_path / "c", rng, "AutoEncoder")
    content = (tmp_path / "c" / "ae.pt").read_bytes()
    corrupted = [content[:length] for length in range(0, len(content), 97)]
    corrupted += [
        content[:at] + bytes([content[at] ^ 0xFF]) + content[at + 1 :] for at in range(len(content))
    ]
    for corrupt in corrupted:
        (tmp_path / "c" / "ae.pt").write_bytes(corrupt)
        try:
            with warnings.catch_warnings():  # torch's on a pickle protocol it reads as odd
                warnings.simplefilter("ignore")
                load_external(tmp_path / "c", "dictionary_learning")
        except ValueError:
            pass  # a flipped byte may still leave a readable state dict


def test_a_state_dict_of_parameters_loads(tmp_path, rng, X):
    """``state_dict(keep_vars=True)`` saves Parameters, which load_state_dict accepts."""
    _, state = _dictionary_learning_checkpoint(tmp_path, rng, "AutoEncoderNew")
    expected = load_external(tmp_path, "dictionary_learning")
    parameters = {name: torch.nn.Parameter(tensor) for name, tensor in state.items()}
    torch.save(parameters, tmp_path / "ae.pt")
    np.testing.assert_array_equal(
        load_external(tmp_path, "dictionary_learning").transform(X), expected.transform(X)
    )


def test_inconsistent_configurations(tmp_path, rng):
    _sparsify_checkpoint(tmp_path / "a", rng, k=N_LATENTS + 1)
    with pytest.raises(ValueError, match="k=41 must be at most n_components=40"):
        load_external(tmp_path / "a", "sparsify")
    _sparsify_checkpoint(tmp_path / "b", rng, d_in="12")
    with pytest.raises(ValueError, match="d_in='12' is not a positive integer"):
        load_external(tmp_path / "b", "sparsify")
    _saelens_checkpoint(tmp_path / "c", rng, {**_SAELENS_V6, "architecture": "topk"})
    with pytest.raises(ValueError, match="gives no k"):
        load_external(tmp_path / "c", "saelens")
    # A k that is no count is named in the file that gives it, as sparsify's d_in is.
    _saelens_checkpoint(tmp_path / "c", rng, {**_SAELENS_V6, "architecture": "topk", "k": 4.0})
    with pytest.raises(ValueError, match=r"cfg\.json: k=4\.0 is not a positive integer"):
        load_external(tmp_path / "c", "saelens")
    _saelens_checkpoint(tmp_path / "d", rng, _SAELENS_V5, ("scaling_factor",))
    with pytest.raises(ValueError, match="does not set finetuning_scaling_factor"):
        load_external(tmp_path / "d", "saelens")
    _dictionary_learning_checkpoint(tmp_path / "e", rng, "AutoEncoderTopK", {"k": K + 1})
    with pytest.raises(ValueError, match=r"gives k=5, but .* k=4"):
        load_external(tmp_path / "e", "dictionary_learning")
    state = torch.load(tmp_path / "e" / "ae.pt", weights_only=True)
    for k in [4.7, float("inf"), float("nan"), 0]:
        torch.save({**state, "k": torch.tensor(k)}, tmp_path / "e" / "ae.pt")
        with pytest.raises(ValueError, match=r"ae\.pt: k=.* is not a positive integer"):
            load_external(tmp_path / "e", "dictionary_learning")
    (tmp_path / "f").mkdir()
    _write_json(tmp_path / "f" / "config.json", {"buffer": {}})
    with pytest.raises(ValueError, match="no 'trainer' entry"):
        load_external(tmp_path / "f", "dictionary_learning")


class _Payload:
    """Pickles as a call to ``Path.touch``: unpickling it would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_ae_pt_is_never_unpickled(tmp_path, rng):
    _dictionary_learning_checkpoint(tmp_path, rng, "AutoEncoder")
    marker = tmp_path / "unpickled"
    torch.save({"encoder.weight": torch.zeros(1), "hook": _Payload(marker)}, tmp_path / "ae.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_external(tmp_path, "dictionary_learning")
    assert not marker.exists()
    # A training backup ({"step", "ae", "optimizer", ...}) is not a state dict.
    torch.save({"step": 10, "ae": {"bias": torch.zeros(D_IN)}}, tmp_path / "ae.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_external(tmp_path, "dictionary_learning")


@pytest.mark.parametrize(
    "tensor",
    [
        torch.rand(N_LATENTS).to_sparse(),
        torch.empty(N_LATENTS, device="meta"),
        torch.rand(N_LATENTS, dtype=torch.complex64),
        torch.quantize_per_tensor(torch.rand(N_LATENTS), 0.1, 0, torch.quint8),
    ],
    ids=["sparse", "meta", "complex", "quantized"],
)
def test_ae_pt_of_tensors_with_no_real_array_is_refused(tmp_path, rng, tensor):
    # torch.load(weights_only=True) reads them; numpy did not, with a TypeError.
    _dictionary_learning_checkpoint(tmp_path, rng, "JumpReluAutoEncoder")
    state = torch.load(tmp_path / "ae.pt", weights_only=True)
    torch.save({**state, "threshold": tensor}, tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"ae\.pt: threshold is a .* a state dict of SAE weights"):
        load_external(tmp_path, "dictionary_learning")
