"""Anomaly detection on digits: SparseAutoencoderOutlierDetector against the usual peers.

For each digit ``c`` of ``load_digits`` (pixels scaled to [0, 1]): train on 80% of the
other nine digits (``train_test_split(test_size=0.2, random_state=0)``), then score the
held-out 20% (inliers) together with every image of ``c`` (outliers), and report the ROC
AUC of the anomaly scores; and, for the outlier detectors, the fractions of held-out
inliers and of outliers their own default threshold (``predict``) flags. Same splits for
every method:

* ``SparseAutoencoderOutlierDetector(random_state=0)``, its defaults, and with the
  transformer's ``k=16`` instead of its ``k=4``;
* ``IsolationForest(random_state=0)``;
* ``LocalOutlierFactor(novelty=True)``;
* PCA(10) reconstruction error;
* ``MiniBatchDictionaryLearning(100, alpha=1, random_state=0)`` reconstruction error (its
  default OMP transform), and the same with 256 atoms, the detector's width.

Run from the repository root (about 2 minutes on 2 quiet cores)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_outliers.py
"""

import time

import numpy as np
from _machine import machine_line
from sklearn.base import is_outlier_detector
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA, MiniBatchDictionaryLearning
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import LocalOutlierFactor

from sksae import SparseAutoencoderOutlierDetector


def reconstruction_error(model, X):
    X_hat = model.inverse_transform(model.transform(X))
    return np.square(X - X_hat).sum(axis=1)


def reconstruction_error_of_codes(model, X):
    return np.square(X - model.transform(X) @ model.components_).sum(axis=1)


#: name -> (make a fresh model, anomaly score of a fitted model: higher = more anomalous)
METHODS = {
    "sksae SparseAutoencoderOutlierDetector": (
        lambda: SparseAutoencoderOutlierDetector(random_state=0),
        lambda model, X: -model.score_samples(X),
    ),
    "sksae SparseAutoencoderOutlierDetector(k=16)": (
        lambda: SparseAutoencoderOutlierDetector(k=16, random_state=0),
        lambda model, X: -model.score_samples(X),
    ),
    "IsolationForest": (
        lambda: IsolationForest(random_state=0),
        lambda model, X: -model.score_samples(X),
    ),
    "LocalOutlierFactor(novelty=True)": (
        lambda: LocalOutlierFactor(novelty=True),
        lambda model, X: -model.score_samples(X),
    ),
    "PCA(10) reconstruction error": (lambda: PCA(10), reconstruction_error),
    **{
        f"MBDL({width}, alpha=1) reconstruction error": (
            lambda width=width: MiniBatchDictionaryLearning(width, alpha=1, random_state=0),
            reconstruction_error_of_codes,
        )
        for width in (100, 256)
    },
}


def splits():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    for digit in range(10):
        inliers, outliers = X[y != digit], X[y == digit]
        train, held_out = train_test_split(inliers, test_size=0.2, random_state=0)
        X_test = np.vstack([held_out, outliers])
        is_outlier = np.r_[np.zeros(len(held_out)), np.ones(len(outliers))]
        yield digit, train, X_test, is_outlier


def main():
    aucs = {name: np.zeros(10) for name in METHODS}
    seconds = dict.fromkeys(METHODS, 0.0)
    # name -> [digit, (held-out inliers flagged, outliers flagged)], for the detectors.
    flagged = {}
    for digit, train, X_test, is_outlier in splits():
        for name, (make, anomaly_score) in METHODS.items():
            start = time.perf_counter()
            model = make().fit(train)
            scores = anomaly_score(model, X_test)
            seconds[name] += time.perf_counter() - start
            aucs[name][digit] = roc_auc_score(is_outlier, scores)
            if is_outlier_detector(model):
                labels = model.predict(X_test)
                flagged.setdefault(name, np.zeros((10, 2)))[digit] = [
                    np.mean(labels[is_outlier == value] == -1) for value in (0, 1)
                ]

    print("ROC AUC on digits: train on the other nine digits, outliers = the digit")
    header = f"{'method':<46}{'digit 9':>8}{'mean 0-9':>9}{'worst':>7}{'fit+score s':>12}"
    print(header)
    print("-" * len(header))
    for name in METHODS:
        print(
            f"{name:<46}{aucs[name][9]:>8.3f}{aucs[name].mean():>9.3f}"
            f"{aucs[name].min():>7.3f}{seconds[name]:>12.1f}"
        )
    print("per digit (0-9):")
    for name in METHODS:
        print(f"  {name:<46}" + " ".join(f"{auc:.3f}" for auc in aucs[name]))
    print("flagged by the detector's default threshold (predict), mean [min, max] over digits:")
    print(f"{'method':<46}{'held-out inliers':>20}{'outliers':>20}")
    for name, fractions in flagged.items():
        print(
            f"{name:<46}"
            + "".join(
                f"{f'{column.mean():.1%} [{column.min():.0%}, {column.max():.0%}]':>20}"
                for column in fractions.T
            )
        )
    print(machine_line())


if __name__ == "__main__":
    main()
