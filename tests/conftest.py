import signal
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from sksae.datasets import make_sparse_superposition


@pytest.fixture(scope="session")
def superposition_small():
    """A quick superposition problem: 4000 samples of 16 features from 48 directions."""
    X, directions, _ = make_sparse_superposition(
        n_samples=4000, n_features=16, n_sources=48, n_active=3, random_state=0, return_sources=True
    )
    return X.astype(np.float32), directions


class _EpochModels:
    """A ``sklearn.callback`` FitCallback keeping each epoch's ``fitted_estimator``, and
    stopping the fit after ``stop_after`` epochs if set."""

    def __init__(self):
        self.models = []
        self.stop_after = None

    def setup(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, *, fitted_estimator):
        if context.task_name == "epoch":
            self.models.append(fitted_estimator)
            return len(self.models) == self.stop_after

    def teardown(self, estimator, context):
        pass


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler, as a terminal gives it: a job started in the
    background (CI's, say) inherits SIGINT ignored, and then Ctrl-C raises nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def epoch_models():
    """A callback for ``set_callbacks`` whose ``models`` are the fit's epochs' models
    (set its ``stop_after`` to stop the fit)."""
    return _EpochModels()


_PROC_STATUS = Path("/proc/self/status")


def _anonymous_resident_bytes():
    """The process's resident anonymous memory (Linux's ``RssAnon``): the heap, numpy's
    arrays and torch's tensors, but not the pages of a memory-mapped file it reads."""
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _peak_memory(fn):
    """``(fn(), peak)``: the most memory ``fn`` held at once beyond what was in use when
    it started, in bytes.

    That is the larger of what Python and numpy allocated (tracemalloc, exact) and of
    the growth of the resident anonymous memory (sampled every millisecond, where Linux
    reports it), which sees torch's tensors too. Call ``fn`` once on small data first:
    the modules and caches a first call sets up would count.
    """
    samples, done = [], threading.Event()

    def sample():
        while not done.wait(0.001):
            samples.append(_anonymous_resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True) if _PROC_STATUS.exists() else None
    before = _anonymous_resident_bytes() if sampler else 0
    tracemalloc.start()
    if sampler:
        sampler.start()
    try:
        result = fn()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        done.set()
        if sampler:
            sampler.join()
        tracemalloc.stop()
    return result, max(traced, max(samples, default=before) - before)


@pytest.fixture
def peak_memory():
    """:func:`_peak_memory`: ``peak_memory(fn)`` is ``(fn(), peak)``, the peak extra
    memory in bytes while ``fn`` ran, torch's allocations included on Linux."""
    return _peak_memory


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Each torch device a test should pass on; CUDA only where a GPU is present."""
    return request.param


def pytest_terminal_summary(terminalreporter):
    """Report how many malformed inputs tests/test_fuzz.py tried, per entry point, and
    how many well-formed ones."""
    # pytest imports the test module under its own name, not as tests.test_fuzz.
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.CASES:
        counts = ", ".join(f"{method} {n}" for method, n in sorted(fuzz.CASES.items()))
        total = sum(fuzz.CASES.values())
        terminalreporter.write_line(
            f"fuzz: {total} malformed-input cases tried ({counts}), "
            f"and {sum(fuzz.WELL_FORMED.values())} well-formed ones"
        )
