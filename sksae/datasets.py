"""Data to train sparse autoencoders on: synthetic data with known ground truth, and the
token activations of a transformer language model."""

import os

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import validate_params

from ._validation import Integers, Reals

__all__ = ["make_sparse_superposition", "token_activations"]


@validate_params(
    {
        "n_samples": [Integers(1)],
        "n_features": [Integers(1)],
        "n_sources": [Integers(1)],
        "n_active": [Reals(0, None, closed="neither")],
        "noise": [Reals(0, None, closed="left")],
        "random_state": ["random_state"],
        "return_sources": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_sparse_superposition(
    n_samples=10_000,
    n_features=64,
    n_sources=256,
    n_active=5,
    noise=0.01,
    *,
    random_state=None,
    return_sources=False,
):
    """Sparse combinations of more directions than dimensions ("superposition").

    ``n_sources`` random unit directions in ``R^n_features``; each sample switches each
    source on independently with probability ``n_active / n_sources`` (so about
    ``n_active`` sources per sample), with an Exp(1) magnitude, and adds isotropic Gaussian
    noise of standard deviation ``noise``. A sparse dictionary learner should recover the
    directions: measure it with :func:`sksae.metrics.mmcs`.

    Parameters
    ----------
    n_samples : int, default=10_000
    n_features : int, default=64
    n_sources : int, default=256
        Number of ground-truth directions; more than ``n_features`` puts them in
        superposition.
    n_active : float, default=5
        Expected number of active sources per sample (at most ``n_sources``).
    noise : float, default=0.01
        Standard deviation of the additive Gaussian noise.
    random_state : int, RandomState instance or None, default=None
        Seed of the draw; pass an int for reproducible data.
    return_sources : bool, default=False
        Also return the directions and the activations that generated the data.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float64
    directions : ndarray of shape (n_sources, n_features)
        Unit-norm ground-truth directions; only when ``return_sources=True``.
    activations : ndarray of shape (n_samples, n_sources)
        Source magnitudes (``X = activations @ directions + noise``); only when
        ``return_sources=True``.

    Examples
    --------
    >>> from sksae.datasets import make_sparse_superposition
    >>> X, directions, activations = make_sparse_superposition(
    ...     n_samples=1000, n_features=16, n_sources=64, n_active=3, random_state=0,
    ...     return_sources=True)
    >>> X.shape, directions.shape, activations.shape
    ((1000, 16), (64, 16), (1000, 64))
    >>> bool(2.5 < (activations > 0).sum(axis=1).mean() < 3.5)
    True
    """
    if n_active > n_sources:
        raise ValueError(f"n_active={n_active} cannot exceed n_sources={n_sources}.")
    rng = check_random_state(random_state)
    directions = rng.standard_normal((n_sources, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    active = rng.random_sample((n_samples, n_sources)) < n_active / n_sources
    activations = rng.exponential(1.0, size=(n_samples, n_sources)) * active
    X = activations @ directions + noise * rng.standard_normal((n_samples, n_features))
    if return_sources:
        return X, directions, activations
    return X


@validate_params(
    {
        "texts": ["array-like"],
        "model_path": [str, os.PathLike],
        "layer": [Integers(0)],
        "batch_size": [Integers(1)],
        "max_length": [Integers(2)],
    },
    prefer_skip_nested_validation=True,
)
def token_activations(texts, model_path, *, layer, batch_size=32, max_length=128):
    """Hidden states of a transformer language model at every token of ``texts``.

    The activations SAEs are trained on for interpretability: one row per token, the
    output of hidden layer ``layer`` (0 is the embeddings), special tokens (``[CLS]``,
    ``[SEP]``, padding) left out. Needs the ``transformers`` package (``pip install
    sksae[interpret]``); the model is loaded from ``model_path`` with
    ``AutoTokenizer`` and ``AutoModel`` and run on the CPU, without network access when
    the path is a local folder.

    Parameters
    ----------
    texts : sequence of str
        The texts to run through the model.
    model_path : str or path-like
        A folder holding a model and its tokenizer (``save_pretrained``'s layout), or a
        Hugging Face Hub name.
    layer : int
        Which hidden state to return: 0 for the embeddings, ``i`` for the output of the
        ``i``-th transformer block.
    batch_size : int, default=32
        Texts per forward pass, padded on the right to the longest (with the
        end-of-sequence token if the tokenizer has no padding token, as GPT-2's); the
        padding is masked out and never returned, so a text's activations do not depend
        on the batch it is in.
    max_length : int, default=128
        Longer texts are truncated to this many tokens (special tokens included), or to
        the model's own limit where it is shorter: the smaller of the tokenizer's
        ``model_max_length`` and the configuration's ``max_position_embeddings``.

    Returns
    -------
    X : ndarray of shape (n_tokens, hidden_size), float32
        The activations, one row per token.
    tokens : ndarray of shape (n_tokens,), str
        Each row's token as the tokenizer spells it.
    positions : ndarray of shape (n_tokens, 2), int
        Each row's text index in ``texts`` and token index within that text.

    Examples
    --------
    >>> from sksae.datasets import token_activations
    >>> X, tokens, positions = token_activations(  # doctest: +SKIP
    ...     ["Sparse codes, one feature at a time."], "path/to/all-MiniLM-L6-v2", layer=3)
    >>> X.shape, tokens[:3], positions[:3, 1]  # doctest: +SKIP
    ((9, 384), array(['sparse', 'codes', ','], dtype='<U7'), array([1, 2, 3]))
    """
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as error:
        raise ImportError(
            "token_activations needs the transformers package: pip install sksae[interpret]"
        ) from error
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token is None:
        # GPT-2-like tokenizers have none; the padding is masked out whatever it is.
        if tokenizer.eos_token is None and batch_size > 1:
            raise ValueError(
                "The tokenizer has no padding token, nor an end-of-sequence token to pad "
                "with: pass batch_size=1, which needs no padding."
            )
        tokenizer.pad_token = tokenizer.eos_token
    # On the right whatever the tokenizer's default: no position ids are passed, so a
    # model with absolute position embeddings would see a text padded on the left at
    # shifted positions, and a causal model never attends to what follows a token.
    tokenizer.padding_side = "right"
    model = AutoModel.from_pretrained(str(model_path)).eval()
    n_layers = model.config.num_hidden_layers
    if layer > n_layers:
        raise ValueError(f"layer={layer} is beyond the model's {n_layers} hidden layers.")
    # Longer inputs would index past the position embeddings. A limit below 1 means
    # none (XLNet's -1).
    for limit in [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 0)]:
        if isinstance(limit, int) and limit > 0:
            max_length = min(max_length, limit)
    rows, tokens, positions = [], [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=batch_size > 1,
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        special = batch.pop("special_tokens_mask").bool() | ~batch["attention_mask"].bool()
        with torch.inference_mode():
            hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
        text_index, token_index = torch.nonzero(~special, as_tuple=True)
        rows.append(hidden[text_index, token_index].float().numpy())
        ids = batch["input_ids"][text_index, token_index].tolist()
        tokens.extend(tokenizer.convert_ids_to_tokens(ids))
        positions.append(np.stack([text_index.numpy() + start, token_index.numpy()], axis=1))
    n_features = model.config.hidden_size
    return (
        np.concatenate(rows) if rows else np.empty((0, n_features), dtype=np.float32),
        np.asarray(tokens, dtype=str),
        np.concatenate(positions) if positions else np.empty((0, 2), dtype=np.intp),
    )
