"""Parallel hyper-parameter searches: GridSearchCV over SAE widths and k, by engine.

The search: ``MinMaxScaler -> SparseAutoencoderTransformer -> LogisticRegression`` on
scikit-learn's digits, a grid of 8 candidates (``n_components`` x ``k``) under 3-fold
cross-validation, 24 fits. Rows, each timed in the same run and reported as the speed-up
over the sequential search:

* ``n_jobs=1``: one process, torch on every core;
* ``loky, n_jobs=2``: joblib's default process pool; joblib starts its workers with one
  thread each for OpenMP (``OMP_NUM_THREADS``), which torch honours;
* ``loky, n_jobs=2, 2 threads each``: the same with ``inner_max_num_threads`` raised to
  the core count, so that two torch pools share the cores (oversubscription);
* ``dask, 2 workers``: ``joblib.parallel_config(backend="dask")`` on a
  ``distributed.LocalCluster`` of two single-threaded worker processes (the cluster's
  start is not timed), when ``distributed`` is installed.

Run from the repository root::

    python benchmarks/bench_parallel_search.py
"""

import os
import time

import joblib
from _machine import machine_line
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, ParameterGrid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sksae import SparseAutoencoderTransformer

GRID = {
    "sparseautoencodertransformer__n_components": [64, 128, 256, 512],
    "sparseautoencodertransformer__k": [8, 16],
}


def search_seconds(X, y, n_jobs, **parallel_config):
    pipe = make_pipeline(
        MinMaxScaler(),
        SparseAutoencoderTransformer(max_iter=30, random_state=0),
        LogisticRegression(max_iter=500),
    )
    start = time.perf_counter()
    with joblib.parallel_config(**parallel_config):
        GridSearchCV(pipe, GRID, cv=3, n_jobs=n_jobs).fit(X, y)
    return time.perf_counter() - start


def main():
    X, y = load_digits(return_X_y=True)
    cores = os.cpu_count()
    # name -> (n_jobs, joblib.parallel_config)
    rows = {
        "n_jobs=1": (1, {}),
        "loky, n_jobs=2": (2, {"backend": "loky"}),
        f"loky, n_jobs=2, {cores} threads each": (
            2,
            {"backend": "loky", "inner_max_num_threads": cores},
        ),
    }
    cluster = None
    try:
        import distributed

        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None
        )
        client = distributed.Client(cluster)
        rows["dask, 2 workers"] = (-1, {"backend": "dask"})
    except ImportError:
        print("(distributed is not installed: no dask row)")
    print(f"GridSearchCV, {len(ParameterGrid(GRID)) * 3} fits on digits")
    print(f"{'engine':<32}{'seconds':>9}{'speed-up':>10}")
    sequential = None
    for name, (n_jobs, parallel_config) in rows.items():
        # Warm-up of each engine with its own settings: the workers started (loky
        # restarts its pool when they change) and their imports of torch and sksae done.
        search_seconds(X[:200], y[:200], n_jobs, **parallel_config)
        seconds = search_seconds(X, y, n_jobs, **parallel_config)
        sequential = sequential or seconds
        print(f"{name:<32}{seconds:>9.1f}{sequential / seconds:>10.2f}")
    if cluster is not None:
        client.close()
        cluster.close()
    print(machine_line())


if __name__ == "__main__":
    main()
