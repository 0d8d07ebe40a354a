import numpy as np
import pytest

from sksae.datasets import make_sparse_superposition, token_activations


def test_data_is_the_sparse_mix_of_unit_directions_plus_noise():
    X, directions, activations = make_sparse_superposition(
        n_samples=20_000,
        n_features=8,
        n_sources=40,
        n_active=4,
        noise=0.05,
        random_state=0,
        return_sources=True,
    )
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    assert (activations >= 0).all()
    assert (activations > 0).sum(axis=1).mean() == pytest.approx(4, rel=0.05)
    assert activations[activations > 0].mean() == pytest.approx(1.0, rel=0.05)  # Exp(1)
    residual = X - activations @ directions
    assert residual.std() == pytest.approx(0.05, rel=0.05)


def test_reproducible_and_noise_free():
    X1 = make_sparse_superposition(100, 4, 8, 2, noise=0.0, random_state=3)
    X2, directions, activations = make_sparse_superposition(
        100, 4, 8, 2, noise=0.0, random_state=3, return_sources=True
    )
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_allclose(X2, activations @ directions)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_active"):
        make_sparse_superposition(10, 4, 8, n_active=9)
    with pytest.raises(ValueError, match="n_samples"):
        make_sparse_superposition(0)
    with pytest.raises(ValueError, match=r"'n_samples' parameter .* must be an int .* Got True"):
        make_sparse_superposition(True)
    with pytest.raises(ValueError, match=r"'n_active' parameter .* must be a float .* Got True"):
        make_sparse_superposition(10, 4, 8, n_active=True)
    with pytest.raises(ValueError, match=r"'noise' parameter .* must be a float .* Got True"):
        make_sparse_superposition(10, 4, 8, noise=True)


@pytest.fixture(scope="module")
def tiny_language_model(tmp_path_factory):
    """A two-layer BERT with random weights and a 12-word vocabulary, saved as a
    ``from_pretrained`` folder: the loading code runs offline and in a second."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "sparse", "codes", "one", "feature"]
    words += ["at", "a", "time", "."]
    vocabulary = {word: index for index, word in enumerate(words)}
    transformers.BertTokenizerFast(vocab=vocabulary).save_pretrained(path)
    config = transformers.BertConfig(
        vocab_size=12,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(path)
    return path


def test_token_activations_are_the_hidden_states_of_the_real_tokens(tiny_language_model):
    import torch
    import transformers

    texts = ["sparse codes at a time .", "one feature", "a"]
    X, tokens, positions = token_activations(texts, tiny_language_model, layer=2, batch_size=2)
    assert X.dtype == np.float32 and X.shape == (9, 8)
    assert tokens.tolist() == ["sparse", "codes", "at", "a", "time", ".", "one", "feature", "a"]
    assert positions[:, 0].tolist() == [0] * 6 + [1] * 2 + [2]
    # Row by row, the model's own hidden states of each text alone (no padding).
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_language_model)
    model = transformers.AutoModel.from_pretrained(tiny_language_model).eval()
    for text_index, text in enumerate(texts):
        with torch.inference_mode():
            alone = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)
        rows = positions[:, 0] == text_index
        expected = alone.hidden_states[2][0, positions[rows, 1]].numpy()
        np.testing.assert_allclose(X[rows], expected, rtol=1e-5, atol=1e-5)


def test_token_activations_rejects_a_layer_the_model_lacks(tiny_language_model):
    with pytest.raises(ValueError, match="layer=3 is beyond the model's 2 hidden layers"):
        token_activations(["a"], tiny_language_model, layer=3)


def _with_tokenizer(model_path, directory, **changes):
    """A copy of the model folder whose tokenizer has the given settings changed."""
    import shutil

    import transformers

    shutil.copytree(model_path, directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path, **changes)
    for name, value in changes.items():  # from_pretrained ignores a None token
        setattr(tokenizer, name, value)
    tokenizer.save_pretrained(directory)
    assert all(
        getattr(transformers.AutoTokenizer.from_pretrained(directory), name) == value
        for name, value in changes.items()
    )
    return directory


def test_token_activations_do_not_depend_on_the_padding_side(tiny_language_model, tmp_path):
    texts = ["sparse codes at a time .", "one feature"]  # the second is padded
    left = _with_tokenizer(tiny_language_model, tmp_path / "left", padding_side="left")
    expected = token_activations(texts, tiny_language_model, layer=1, batch_size=1)
    X, tokens, positions = token_activations(texts, left, layer=1)
    assert tokens.tolist() == expected[1].tolist()
    np.testing.assert_array_equal(positions, expected[2])  # "one" is token 1 of its text
    # Padded on the left, "one" would sit at the position embedding of "at".
    np.testing.assert_allclose(X, expected[0], rtol=1e-5, atol=1e-5)


def test_a_model_without_a_position_limit(tiny_language_model, tmp_path):
    """XLNet's relative positions have no limit: its config says -1."""
    import shutil

    import transformers

    shutil.copytree(tiny_language_model, tmp_path, dirs_exist_ok=True)
    config = transformers.XLNetConfig(
        vocab_size=12, d_model=8, n_layer=1, n_head=2, d_inner=16, pad_token_id=0
    )
    assert config.max_position_embeddings == -1
    transformers.XLNetModel(config).save_pretrained(tmp_path)
    X, tokens, _ = token_activations(["sparse codes one feature"], tmp_path, layer=1)
    assert X.shape == (4, 8) and tokens.tolist() == ["sparse", "codes", "one", "feature"]


def test_long_texts_are_truncated_to_the_position_embeddings(tiny_language_model):
    text = " ".join(["sparse codes"] * 40)
    X, _, positions = token_activations([text], tiny_language_model, layer=1)
    # 32 positions, [CLS] and [SEP] among them; max_length=128 would overrun them.
    assert X.shape == (30, 8) and positions[-1].tolist() == [0, 30]
    assert len(token_activations([text], tiny_language_model, layer=1, max_length=8)[0]) == 6


def test_a_tokenizer_without_a_padding_token(tiny_language_model, tmp_path):
    texts = ["sparse codes", "one feature ."]
    no_pad = _with_tokenizer(tiny_language_model, tmp_path / "no-pad", pad_token=None)
    with pytest.raises(ValueError, match=r"no padding token.*batch_size=1"):
        token_activations(texts, no_pad, layer=1)
    X, tokens, _ = token_activations(texts, no_pad, layer=1, batch_size=1)
    expected = token_activations(texts, tiny_language_model, layer=1, batch_size=1)
    assert tokens.tolist() == expected[1].tolist()
    np.testing.assert_array_equal(X, expected[0])
