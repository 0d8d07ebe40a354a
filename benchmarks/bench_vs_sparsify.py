"""TopK training steps per second: sksae against EleutherAI sparsify's ``SparseCoder``.

Both train the same TopK SAE (unit-norm decoder, Adam, tied initialisation) on the same
float32 data at the same shape, on the same device, in the same run:

* ``sparsify``: the installed ``eai-sparsify`` package's ``SparseCoder`` stepped by hand
  as its trainer does (forward with the dead-latent mask, ``fvu + auxk_alpha * auxk_loss``,
  backward, decoder-parallel gradient removed, Adam, decoder renormalised). Its trainer
  class itself is built around a language model, so it is not used. On a CPU (no Triton)
  sparsify runs its eager encoder and decoder.
* ``sksae``: ``SparseAutoencoderTransformer(...).fit`` on ``steps * batch`` rows for two
  epochs, its set-up (validation, geometric median) included.

Rounds interleave the two so that a slow spell of a shared machine hits both; each
figure is the median over the rounds. The ratio is sksae's steps/s over sparsify's.

Install sparsify after the pinned torch, so that pip keeps it (its dependencies include
``transformers`` and ``datasets``)::

    pip install torch==2.13.0 && pip install -e . && pip install eai-sparsify

Run from the repository root::

    python benchmarks/bench_vs_sparsify.py                  # CPU: B=4096, d=512, n=4096, k=32
    python benchmarks/bench_vs_sparsify.py --device cuda    # the GPU shapes of REFERENCE §3
"""

import argparse
import datetime
import importlib.metadata
import os
import statistics
import sys
import time

import numpy as np
import torch

from sksae import SparseAutoencoderTransformer

#: (batch, n_features, n_latents, k) per device.
SHAPES = {
    "cpu": [(4096, 512, 4096, 32)],
    "cuda": [(8192, 768, 32768, 32), (8192, 2304, 16384, 64)],
}


def sparsify_steps_per_s(X, n_latents, k, batch, device):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    config = SparseCoderConfig(num_latents=n_latents, k=k)
    sae = SparseCoder(X.shape[1], config, device=device, dtype=torch.float32)
    learning_rate = 2e-4 / (n_latents / 2**14) ** 0.5  # its trainer's default
    optimizer = torch.optim.Adam(sae.parameters(), lr=learning_rate)
    n_steps = len(X) // batch
    start = time.perf_counter()
    for step in range(n_steps):
        x = X[step * batch : (step + 1) * batch]
        out = sae(x, dead_mask=None)  # no latent has had time to die in these steps
        loss = out.fvu + out.auxk_loss / 32
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
    loss.item()
    _synchronize(device)
    return n_steps / (time.perf_counter() - start)


def sksae_steps_per_s(X, n_latents, k, batch, device):
    sae = SparseAutoencoderTransformer(
        n_latents, k=k, batch_size=batch, max_iter=2, tol=0.0, device=device, random_state=0
    )
    start = time.perf_counter()
    sae.fit(X)
    return sae.n_steps_ / (time.perf_counter() - start)


def _synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=16, help="training steps per timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats (median)")
    args = parser.parse_args(argv)
    try:
        version = importlib.metadata.version("eai-sparsify")
    except importlib.metadata.PackageNotFoundError:
        print(
            "eai-sparsify is not installed: nothing to compare against. Install it after "
            "the pinned torch: pip install eai-sparsify"
        )
        return 1
    print(f"TopK training steps on {args.device}, float32, sparsify {version}")
    print(f"{'shape':<30}{'sparsify steps/s':>17}{'sksae steps/s':>14}{'ratio':>7}")
    rng = np.random.default_rng(0)
    for batch, n_features, n_latents, k in SHAPES[args.device]:
        X = rng.standard_normal((batch * args.steps, n_features), dtype=np.float32)
        X_device = torch.from_numpy(X).to(args.device)
        theirs, ours = [], []
        for _ in range(args.rounds):
            theirs.append(sparsify_steps_per_s(X_device, n_latents, k, batch, args.device))
            ours.append(sksae_steps_per_s(X, n_latents, k, batch, args.device))
        theirs, ours = statistics.median(theirs), statistics.median(ours)
        shape = f"B{batch} d{n_features} n{n_latents} k{k}"
        print(f"{shape:<30}{theirs:>17.2f}{ours:>14.2f}{ours / theirs:>7.2f}")
    print(
        f"machine: os.cpu_count()={os.cpu_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), date {datetime.date.today().isoformat()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
