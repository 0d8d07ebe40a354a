"""TopK training steps per second: sksae against EleutherAI sparsify's ``SparseCoder``.

Both train the same TopK SAE (unit-norm decoder, Adam, tied initialisation) on the same
float32 data at the same shape, on the same device, in the same run:

* ``sparsify``: the installed ``eai-sparsify`` package's ``SparseCoder`` stepped by hand
  as its trainer does (forward with the dead-latent mask, ``fvu + auxk_alpha * auxk_loss``,
  backward, decoder-parallel gradient removed, Adam, decoder renormalised). Its trainer
  class itself is built around a language model, so it is not used. On a CPU (no Triton)
  sparsify runs its eager encoder and decoder. On a GPU its ``forward`` always runs under
  bfloat16 autocast (a decorator of its own), so the like-for-like sksae row there is
  ``autocast_dtype="bfloat16"``.
* ``sksae``: ``SparseAutoencoderTransformer.fit`` in float32, and with
  ``autocast_dtype="bfloat16"``. Its rate is measured *inside* ``fit``: the difference of
  two fits on the same data, of 1 and of ``1 + --epochs`` epochs, over the difference of
  their steps. Per-epoch work (statistics, the host copy of the state) is counted; the
  one-time set-up (validation, the transfer to the device, the geometric-median
  initialisation) is not, and is printed on its own.

Rounds interleave the trainers so that a slow spell of a shared machine hits all; each
figure is the median over the rounds. Ratios are sksae's steps/s over sparsify's.

Install sparsify after the pinned torch, so that pip keeps it (its dependencies include
``transformers`` and ``datasets``)::

    pip install torch==2.13.0 && pip install -e . && pip install eai-sparsify

Run from the repository root::

    python benchmarks/bench_vs_sparsify.py                # CPU: B=4096, d=512, n=4096, k=32
    python benchmarks/bench_vs_sparsify.py --device cuda  # B8192: d768 n32768 k32, d2304 n16384 k64
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from _machine import machine_line
from _sparsify import ABSENT, load_sparsify

from sksae import SparseAutoencoderTransformer

#: (batch, n_features, n_latents, k) per device.
SHAPES = {
    "cpu": [(4096, 512, 4096, 32)],
    "cuda": [(8192, 768, 32768, 32), (8192, 2304, 16384, 64)],
}
#: Training batches of data per shape: each epoch of a fit is this many steps.
BATCHES = {"cpu": 8, "cuda": 16}


def sparsify_steps_per_s(sparsify, X, n_latents, k, batch, device, rounds_of_data=2):
    SparseCoder, SparseCoderConfig, _ = sparsify
    torch.manual_seed(0)
    config = SparseCoderConfig(num_latents=n_latents, k=k)
    sae = SparseCoder(X.shape[1], config, device=device, dtype=torch.float32)
    learning_rate = 2e-4 / (n_latents / 2**14) ** 0.5  # its trainer's default
    optimizer = torch.optim.Adam(sae.parameters(), lr=learning_rate, fused=True)
    batches = [X[start : start + batch] for start in range(0, len(X), batch)]

    def step(x):
        out = sae(x, dead_mask=None)  # no latent has had time to die in these steps
        loss = out.fvu + out.auxk_loss / 32
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()

    step(batches[0])  # warm-up: kernels compiled and workspaces allocated
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(rounds_of_data):
        for x in batches:
            step(x)
    _synchronize(device)
    return rounds_of_data * len(batches) / (time.perf_counter() - start)


def sksae_fit(X, n_latents, k, batch, device, autocast_dtype, epochs):
    """``fit`` for ``epochs`` epochs; returns (seconds, steps)."""
    sae = SparseAutoencoderTransformer(
        n_latents,
        k=k,
        batch_size=batch,
        max_iter=epochs,
        tol=0.0,
        device=device,
        autocast_dtype=autocast_dtype,
        random_state=0,
    )
    _synchronize(device)
    start = time.perf_counter()
    sae.fit(X)
    return time.perf_counter() - start, sae.n_steps_


def sksae_steps_per_s(X, n_latents, k, batch, device, autocast_dtype, epochs):
    """Steps/s inside ``fit`` and its one-time set-up in seconds (see the module doc)."""
    short, short_steps = sksae_fit(X, n_latents, k, batch, device, autocast_dtype, 1)
    long, long_steps = sksae_fit(X, n_latents, k, batch, device, autocast_dtype, 1 + epochs)
    steps_per_s = (long_steps - short_steps) / (long - short)
    return steps_per_s, short - short_steps / steps_per_s


def _synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=sorted(SHAPES))
    parser.add_argument(
        "--epochs", type=int, help="extra epochs of fit timed per row (cpu: 2, cuda: 8)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats (median)")
    args = parser.parse_args(argv)
    epochs = args.epochs or {"cpu": 2, "cuda": 8}[args.device]
    sparsify = load_sparsify()
    if sparsify is None:
        print(ABSENT)
        return 1
    version = sparsify[2]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here.")
        return 1
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"TopK training steps/s on {device_name}, float32 data, sparsify {version}")
    sparsify_precision = "bf16 autocast" if args.device == "cuda" else "float32"
    print(f"(sparsify's forward: {sparsify_precision}; sksae fit: float32 and bf16 autocast)")
    header = ["shape", "sparsify", "sksae f32", "ratio", "sksae bf16", "ratio", "set-up s"]
    print(f"{header[0]:<26}" + "".join(f"{h:>11}" for h in header[1:]))
    rng = np.random.default_rng(0)
    for batch, n_features, n_latents, k in SHAPES[args.device]:
        X = rng.standard_normal((batch * BATCHES[args.device], n_features), dtype=np.float32)
        X_device = torch.from_numpy(X).to(args.device)
        # Untimed warm-up: the first fit in a process also initialises the device's
        # libraries (cuBLAS and cuSPARSE handles, kernels), which the timed fits must not
        # count against a step.
        for autocast_dtype in [None, "bfloat16"]:
            sksae_fit(X, n_latents, k, batch, args.device, autocast_dtype, 1)
        rates = {"sparsify": [], None: [], "bfloat16": []}
        setups = []
        for _ in range(args.rounds):
            rates["sparsify"].append(
                sparsify_steps_per_s(sparsify, X_device, n_latents, k, batch, args.device)
            )
            for autocast_dtype in [None, "bfloat16"]:
                rate, setup = sksae_steps_per_s(
                    X, n_latents, k, batch, args.device, autocast_dtype, epochs
                )
                rates[autocast_dtype].append(rate)
                setups.append(setup)
        theirs, f32, bf16 = (statistics.median(rates[key]) for key in rates)
        shape = f"B{batch} d{n_features} n{n_latents} k{k}"
        row = [theirs, f32, f32 / theirs, bf16, bf16 / theirs, statistics.median(setups)]
        print(f"{shape:<26}" + "".join(f"{value:>11.2f}" for value in row))
        del X_device
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
