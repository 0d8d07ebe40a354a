"""
=====================================================
Sparse autoencoder features for digit classification
=====================================================

A :class:`~sksae.SparseAutoencoderTransformer` learns an overcomplete dictionary of
pen strokes from the 8x8 digit images; its sparse codes feed a logistic regression.
:class:`~sklearn.model_selection.GridSearchCV` tunes the dictionary width
(``n_components``) and the number of active latents per image (``k``) by the accuracy
of the whole pipeline, and the result is compared with the raw pixels and with the
features of scikit-learn's :class:`~sklearn.neural_network.BernoulliRBM`.
"""

# %%
# Data: 1797 images of 64 pixels, scaled to [0, 1].
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import BernoulliRBM
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sksae import SparseAutoencoderTransformer

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)

# %%
# The pipeline and the grid search: 4 settings x 5 folds, two at a time.
pipe = make_pipeline(
    MinMaxScaler(),
    SparseAutoencoderTransformer(random_state=0),
    LogisticRegression(max_iter=1000),
)
grid = {
    "sparseautoencodertransformer__n_components": [128, 256],
    "sparseautoencodertransformer__k": [8, 16],
}
start = time.perf_counter()
search = GridSearchCV(pipe, grid, n_jobs=2).fit(X_train, y_train)
search_seconds = time.perf_counter() - start

results = pd.DataFrame(search.cv_results_)
table = results[
    [
        "param_sparseautoencodertransformer__n_components",
        "param_sparseautoencodertransformer__k",
        "mean_test_score",
        "std_test_score",
        "mean_fit_time",
    ]
].rename(columns=lambda name: name.removeprefix("param_sparseautoencodertransformer__"))
print(table.sort_values("mean_test_score", ascending=False).to_string(index=False))
print(f"grid search: {search_seconds:.1f} s, best {search.best_params_}")

# %%
# Against the baselines, on the held-out test set.
raw_pixels = make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=1000))
rbm = make_pipeline(
    MinMaxScaler(),
    BernoulliRBM(n_components=100, learning_rate=0.06, n_iter=10, random_state=0),
    LogisticRegression(C=6000, max_iter=1000),
)
accuracies = {
    "raw pixels + LogisticRegression": raw_pixels.fit(X_train, y_train).score(X_test, y_test),
    "BernoulliRBM(100) + LogisticRegression": rbm.fit(X_train, y_train).score(X_test, y_test),
    "SparseAutoencoderTransformer (best of grid) + LogisticRegression": search.score(
        X_test, y_test
    ),
}
for name, accuracy in accuracies.items():
    print(f"{accuracy:.4f}  {name}")

# %%
# The dictionary: each decoder row of the best model, shown as an 8x8 image. The latents
# that fire most often come first.
sae = search.best_estimator_.named_steps["sparseautoencodertransformer"]
order = np.argsort(sae.feature_density_)[::-1][:48]
fig, axes = plt.subplots(4, 12, figsize=(12, 4.4))
for ax, index in zip(axes.ravel(), order, strict=True):
    ax.imshow(sae.components_[index].reshape(8, 8), cmap="RdBu_r")
    ax.set_axis_off()
fig.suptitle("Most frequently active dictionary atoms")
plt.show()
