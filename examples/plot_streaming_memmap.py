"""
Training on data larger than memory
===================================

Activations of a large model quickly outgrow memory: a million tokens of a 4096-wide
layer are 16 GB in float32. ``fit`` and ``transform`` read a memory-mapped array one
minibatch of rows at a time, so such a file trains in the memory of a few batches; and
``partial_fit`` trains from any stream of chunks.

Here a file of 400,000 synthetic activations (sparse combinations of 256 hidden
directions in 64 dimensions) is written chunk by chunk, then trained on both ways, while
:mod:`tracemalloc` records the peak of numpy's allocations: any copy of the data, whole
or in part, would show there (torch's per-batch buffers are not traced).
"""

# %%
# Write the data to disk, a chunk at a time
# -----------------------------------------
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from sksae import SparseAutoencoderTransformer
from sksae.metrics import fvu, mmcs

N_SAMPLES, N_FEATURES, N_SOURCES, CHUNK = 400_000, 64, 256, 20_000
rng = np.random.default_rng(0)
directions = rng.standard_normal((N_SOURCES, N_FEATURES))
directions /= np.linalg.norm(directions, axis=1, keepdims=True)

path = Path(tempfile.mkdtemp()) / "activations.npy"
X_file = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(N_SAMPLES, N_FEATURES))
for start in range(0, N_SAMPLES, CHUNK):
    # About 5 of the 256 sources active per sample, with Exp(1) magnitudes.
    active = rng.random((CHUNK, N_SOURCES)) < 5 / N_SOURCES
    sources = active * rng.exponential(1.0, size=(CHUNK, N_SOURCES))
    noise = 0.01 * rng.standard_normal((CHUNK, N_FEATURES))
    X_file[start : start + CHUNK] = sources @ directions + noise
X_file.flush()
del X_file
print(f"{path.name}: {path.stat().st_size / 1e6:.0f} MB on disk")

# %%
# ``fit`` on the memory map
# -------------------------
# ``numpy.load(..., mmap_mode="r")`` maps the file without reading it. Training shuffles
# the rows and reads each minibatch from the map; ``transform`` reads chunks in order.
# The last chunk is held out (a slice of a memory map is a memory map too).
X = np.load(path, mmap_mode="r")
N_STREAMED = N_SAMPLES - CHUNK
# The first fit in a process imports parts of torch lazily, tens of megabytes of Python
# objects that tracemalloc would count: a small fit first, untraced.
SparseAutoencoderTransformer(n_components=8, k=1, max_iter=1).fit(X[:1024])
tracemalloc.start()
start = time.perf_counter()
sae = SparseAutoencoderTransformer(
    n_components=512, k=5, batch_size=1024, max_iter=4, random_state=0
).fit(X[:N_STREAMED])
seconds = time.perf_counter() - start
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
held_out = np.asarray(X[-CHUNK:])
print(
    f"fit: {seconds:.1f} s, peak allocation {peak / 1e6:.0f} MB for "
    f"{X[:N_STREAMED].nbytes / 1e6:.0f} MB of data; held-out FVU "
    f"{fvu(held_out, sae.inverse_transform(sae.transform(held_out))):.3f}, "
    f"MMCS {mmcs(directions, sae.components_):.3f}"
)

# %%
# ``partial_fit`` on a stream of chunks
# -------------------------------------
# The same model trained chunk by chunk, as from an activation store that hands out one
# block at a time. Each call makes one pass over its chunk and keeps Adam's state for the
# next; here the stream is read four times, as many passes as ``fit`` made, and
# ``partial_fit_samples`` lays ``fit``'s learning-rate schedule over those four passes.
streamed = SparseAutoencoderTransformer(
    n_components=512, k=5, batch_size=1024, partial_fit_samples=4 * N_STREAMED, random_state=0
)
tracemalloc.start()
for _ in range(4):
    for start in range(0, N_STREAMED, CHUNK):
        streamed.partial_fit(np.asarray(X[start : start + CHUNK]))
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(
    f"partial_fit: peak allocation {peak / 1e6:.0f} MB; held-out FVU "
    f"{fvu(held_out, streamed.inverse_transform(streamed.transform(held_out))):.3f}, "
    f"MMCS {mmcs(directions, streamed.components_):.3f}"
)

# %%
# Neither ever holds more than a small part of the data: ``fit`` copies one minibatch at
# a time (its peak is the fixed-size chunks of the statistics it computes over the
# data), and the ``partial_fit`` loop one chunk. Both recover the 256 hidden directions
# (MMCS near 1) and reconstruct held-out rows as well as each other. The memory a fit
# needs is set by ``batch_size`` (or the chunk size) and ``n_components``, not by
# ``n_samples``. The operating system's page cache may keep recently read parts of the
# file in memory, but it gives those pages back when memory runs short.
