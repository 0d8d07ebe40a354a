"""Beyond one process: searches and streamed training on a dask.distributed cluster.

Each test starts a LocalCluster of two worker processes (about 5 s).
"""

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sksae import SparseAutoencoderTransformer
from sksae.metrics import fvu, mmcs

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture
def cluster_client(request):
    memory_limit = getattr(request, "param", "2GiB")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit=memory_limit,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _worker_torch_threads():
    import torch

    return torch.get_num_threads()


def test_grid_search_on_a_dask_cluster_finds_what_one_process_finds(cluster_client):
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(
        MinMaxScaler(),
        SparseAutoencoderTransformer(max_iter=10, random_state=0),
        LogisticRegression(max_iter=200),
    )
    grid = {
        "sparseautoencodertransformer__alpha": [0.0],
        "sparseautoencodertransformer__k": [4, 8],
        "sparseautoencodertransformer__n_components": [32, 64],
    }
    local = GridSearchCV(pipe, grid, cv=2).fit(X[:600], y[:600])
    with joblib.parallel_config(backend="dask"):
        remote = GridSearchCV(pipe, grid, cv=2, n_jobs=-1).fit(X[:600], y[:600])
    assert remote.best_params_ == local.best_params_
    # Workers run torch on one thread, the main process on all cores: sums may round
    # differently, the fits are otherwise the same.
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"], atol=0.02
    )
    # No oversubscription: dask's nanny starts each worker with OMP_NUM_THREADS=1, which
    # torch honours, so two single-threaded workers share the cores.
    assert set(cluster_client.run(_worker_torch_threads).values()) == {1}


@pytest.mark.parametrize("cluster_client", ["300MiB"], indirect=True)
def test_a_dask_array_larger_than_a_worker_trains_block_by_block(cluster_client, peak_memory):
    n_samples, n_features, n_sources, block_rows = 1_600_000, 64, 128, 20_000
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((n_sources, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # A lazy superposition: about 4 of 128 sources per row, computed block by block on
    # the workers. 410 MB in float32, more than a worker's 300 MiB.
    random = da.random.default_rng(0)
    shape, chunks = (n_samples, n_sources), (block_rows, n_sources)
    active = random.random(shape, chunks=chunks) < 4 / n_sources
    sources = active * random.exponential(1.0, size=shape, chunks=chunks)
    X = (sources @ directions).astype(np.float32)
    assert X.nbytes > 300 * 2**20

    sae = SparseAutoencoderTransformer(n_components=256, k=4, batch_size=2048, random_state=0)
    blocks = iter(X.blocks)
    # The first call also imports parts of torch lazily, which would count.
    sae.partial_fit(next(blocks).compute())

    def train():
        for block in blocks:  # the recipe: one computed block at a time
            sae.partial_fit(block.compute())

    _, peak = peak_memory(train)
    # A few blocks' worth (5 MB each), and the client's buffers: never the array.
    assert peak < X.nbytes / 4
    sample = X.blocks[-1].compute()
    assert fvu(sample, sae.inverse_transform(sae.transform(sample))) < 0.2
    assert mmcs(directions, sae.components_) > 0.95
