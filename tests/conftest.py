import numpy as np
import pytest

from sksae.datasets import make_sparse_superposition


@pytest.fixture(scope="session")
def superposition_small():
    """A quick superposition problem: 4000 samples of 16 features from 48 directions."""
    X, directions, _ = make_sparse_superposition(
        n_samples=4000, n_features=16, n_sources=48, n_active=3, random_state=0, return_sources=True
    )
    return X.astype(np.float32), directions
