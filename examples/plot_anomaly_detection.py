"""
======================================================
Anomaly detection: an unseen digit is an outlier
======================================================

:class:`~sksae.SparseAutoencoderOutlierDetector` learns a sparse dictionary of normal
data and scores a sample by how badly the dictionary rebuilds it. Here it is fitted on
the images of the digits 0 to 8 and must flag the 9s among held-out images, against
scikit-learn's :class:`~sklearn.neighbors.LocalOutlierFactor` and
:class:`~sklearn.ensemble.IsolationForest` on the same split.
"""

# %%
# Train on 80% of the digits 0-8; test on the other 20% and on every 9.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import IsolationForest
from sklearn.metrics import RocCurveDisplay, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import LocalOutlierFactor

from sksae import SparseAutoencoderOutlierDetector

X, y = load_digits(return_X_y=True)
X = X / 16.0
X_train, X_inliers = train_test_split(X[y != 9], test_size=0.2, random_state=0)
X_test = np.vstack([X_inliers, X[y == 9]])
is_outlier = np.r_[np.zeros(len(X_inliers)), np.ones(np.sum(y == 9))]

# %%
# Fit the detectors. Each scores with ``score_samples`` (higher = more normal).
detectors = {
    "SparseAutoencoderOutlierDetector": SparseAutoencoderOutlierDetector(random_state=0),
    "LocalOutlierFactor(novelty=True)": LocalOutlierFactor(novelty=True),
    "IsolationForest": IsolationForest(random_state=0),
}
fig, ax = plt.subplots(figsize=(5, 5))
for name, detector in detectors.items():
    anomaly_score = -detector.fit(X_train).score_samples(X_test)
    print(f"{name:<34} ROC AUC {roc_auc_score(is_outlier, anomaly_score):.3f}")
    RocCurveDisplay.from_predictions(is_outlier, anomaly_score, name=name, ax=ax)
ax.set_title("Digit 9 as the outlier class")
plt.show()

# %%
# The detector's own threshold: ``predict`` flags samples whose error passes Tukey's
# far-out fence on the training errors (``contamination="auto"``). How many 9s and how
# many held-out inliers does it flag?
sae = detectors["SparseAutoencoderOutlierDetector"]
flagged = sae.predict(X_test) == -1
print(
    f"flagged: {flagged[is_outlier == 1].mean():.0%} of the 9s, "
    f"{flagged[is_outlier == 0].mean():.0%} of the held-out inliers"
)

# %%
# What the detector sees: the worst-reconstructed test images and their
# reconstructions through the dictionary learned without 9s.
errors = -sae.score_samples(X_test)
worst = np.argsort(errors)[::-1][:6]
reconstructions = sae.inverse_transform(sae.transform(X_test[worst]))
fig, axes = plt.subplots(2, 6, figsize=(8, 3))
for column, (index, rebuilt) in enumerate(zip(worst, reconstructions, strict=True)):
    axes[0, column].imshow(X_test[index].reshape(8, 8), cmap="gray_r")
    axes[0, column].set_title("9" if is_outlier[index] else "inlier", fontsize=9)
    axes[1, column].imshow(rebuilt.reshape(8, 8), cmap="gray_r")
for axis in axes.ravel():
    axis.set_xticks([])
    axis.set_yticks([])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel("rebuilt")
fig.tight_layout()
plt.show()
