"""
================================================================
Recovering features in superposition: the MMCS training curve
================================================================

:func:`sksae.datasets.make_sparse_superposition` draws data from more directions than
dimensions, a few active per sample: the setting in which sparse autoencoders are used
to find the features of a neural network. Because the true directions are known, the
learned dictionary can be scored against them with the mean max cosine similarity
(:func:`sksae.metrics.mmcs`, 1 = every direction found).

A callback of :mod:`sklearn.callback` records the MMCS after every epoch of the fit,
and the result is compared with scikit-learn's
:class:`~sklearn.decomposition.MiniBatchDictionaryLearning` on the same data.
"""

# %%
# 20,000 samples in 32 dimensions, from 128 directions, about 4 active per sample.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import MiniBatchDictionaryLearning

from sksae import SparseAutoencoderTransformer
from sksae.datasets import make_sparse_superposition
from sksae.metrics import fvu, l0, mmcs

X, directions, _ = make_sparse_superposition(
    n_samples=20_000,
    n_features=32,
    n_sources=128,
    n_active=4,
    random_state=0,
    return_sources=True,
)
X = X.astype(np.float32)


# %%
# A callback that scores the dictionary after each epoch. ``on_fit_task_end`` receives
# a fitted copy of the estimator at the end of every epoch.
class MMCSCurve:
    def __init__(self):
        self.scores = []

    def setup(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None, **kwargs):
        if context.task_name == "epoch":
            self.scores.append(mmcs(directions, fitted_estimator.components_))

    def teardown(self, estimator, context):
        pass


curve = MMCSCurve()
sae = SparseAutoencoderTransformer(n_components=256, k=4, max_iter=40, random_state=0)
sae.set_callbacks(curve)
sae.fit(X)

# %%
# The peer: dictionary learning with as many atoms as the SAE has latents (twice the
# true directions), so that neither dictionary has more atoms to match them with.
mbdl = MiniBatchDictionaryLearning(
    n_components=256, alpha=0.3, batch_size=256, max_iter=3, random_state=0
).fit(X)
mbdl_mmcs = mmcs(directions, mbdl.components_)

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(np.arange(1, len(curve.scores) + 1), curve.scores, marker=".", label="TopK SAE")
ax.axhline(mbdl_mmcs, color="gray", linestyle="--", label="MiniBatchDictionaryLearning")
ax.set_xlabel("epoch")
ax.set_ylabel("MMCS with the true directions")
ax.set_ylim(0.5, 1.0)
ax.legend()
fig.tight_layout()
plt.show()

# %%
# Reconstruction at the same sparsity: the SAE's encoder, pursuit over the SAE's
# dictionary (``transform_algorithm="pursuit"``, no refit), and dictionary learning's
# OMP with 4 nonzeros.
codes = sae.transform(X)
pursued = sae.set_params(transform_algorithm="pursuit").transform(X)
mbdl.set_params(transform_algorithm="omp", transform_n_nonzero_coefs=4)
mbdl_codes = mbdl.transform(X)
print(f"{'model':<36}{'MMCS':>7}{'FVU':>8}{'L0':>6}")
for name, score, X_hat, c in [
    ("TopK SAE, encoder", curve.scores[-1], sae.inverse_transform(codes), codes),
    ("TopK SAE, pursuit", curve.scores[-1], sae.inverse_transform(pursued), pursued),
    ("MiniBatchDictionaryLearning, OMP", mbdl_mmcs, mbdl_codes @ mbdl.components_, mbdl_codes),
]:
    print(f"{name:<36}{score:>7.3f}{fvu(X, X_hat):>8.4f}{l0(c):>6.2f}")
