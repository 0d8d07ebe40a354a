"""Training-step times on a GPU: every sksae variant against a plain loop and sparsify.

At B8192 d768 n32768 k32 and B8192 d2304 n16384 k64 (GPT-2-small and Gemma-2-2B
widths), with bfloat16 autocast, in one run:

* ``bf16 matmul``: an 8192^3 bfloat16 product, the ceiling the rates are compared with;
* ``plain relu``: a bare ReLU + L1 SAE step written here in plain torch (autocast, fused
  Adam), the dense reference;
* ``sksae <activation>``: one step of sksae's trainer (the loop inside ``fit``) with
  ``autocast_dtype=bfloat16``, AuxK armed;
* ``sparsify topk``: EleutherAI sparsify's ``SparseCoder`` stepped as its trainer does
  (its forward always autocasts to bfloat16), when ``eai-sparsify`` is installed.

Each figure is the median of three timings of ten steps on the same batch, after two
warm-up steps; the dense-equivalent rate is ``12 * B * d * n`` FLOPs per step. The last
column counts the times a step makes the host wait for the device (torch's CUDA sync
debug mode warns at each), over four steps that follow the timed ones; AuxK's check for
dead latents, once every 256 steps, falls outside them. The full estimator (``fit``, with
its per-epoch work) is timed by ``bench_vs_sparsify.py``.

Run from the repository root, on a machine with a CUDA GPU::

    python benchmarks/bench_gpu_steps.py
"""

import datetime
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from _sparsify import ABSENT, load_sparsify

from sksae._nn.module import SparseAutoencoder
from sksae._nn.sparsifiers import BatchTopK, JumpReLU, ReLU, TopK
from sksae._nn.training import AuxK, Trainer

SHAPES = [(8192, 768, 32768, 32), (8192, 2304, 16384, 64)]
DEVICE = "cuda"


def milliseconds(step, iterations=10, warm_up=2):
    for _ in range(warm_up):
        step()
    torch.cuda.synchronize()
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
        timings.append((time.perf_counter() - start) / iterations * 1e3)
    return statistics.median(timings)


def host_syncs(step, n_steps=4):
    """The mean number of times ``step`` makes the host wait for the device."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(n_steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught) / n_steps


def bf16_matmul_ceiling(size=8192):
    """FLOP/s of a ``size``-cubed bfloat16 matrix product."""
    a = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    return 2 * size**3 / milliseconds(lambda: a @ a) * 1e3


def sksae_step(sparsifier, x, n_latents):
    model = SparseAutoencoder(x.shape[1], n_latents, sparsifier.to(DEVICE), device=DEVICE)
    model.reset_parameters(torch.Generator().manual_seed(0), b_dec=torch.zeros(x.shape[1]))
    trainer = Trainer(
        model,
        learning_rate=1e-4,
        alpha=1e-3,
        auxk=AuxK(k=x.shape[1] // 2, coef=1 / 32, dead_steps=256),
        autocast_dtype=torch.bfloat16,
    )
    return lambda: trainer.step(x)


def plain_relu_step(x, n_latents):
    n_features = x.shape[1]
    directions = torch.randn(n_latents, n_features, device=DEVICE)
    directions /= directions.norm(dim=1, keepdim=True)
    W_enc, W_dec = directions.clone().requires_grad_(), directions.clone().requires_grad_()
    b_enc = torch.zeros(n_latents, device=DEVICE, requires_grad=True)
    b_dec = torch.zeros(n_features, device=DEVICE, requires_grad=True)
    optimizer = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4, fused=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            code = F.relu(F.linear(x, W_enc, b_enc - W_enc @ b_dec))
            x_hat = code @ W_dec + b_dec
        loss = (x - x_hat.float()).square().sum(1).mean() + 1e-3 * code.float().sum(1).mean()
        loss.backward()
        optimizer.step()

    return step


def sparsify_step(sparsify, x, n_latents, k):
    SparseCoder, SparseCoderConfig, _ = sparsify
    config = SparseCoderConfig(num_latents=n_latents, k=k)
    sae = SparseCoder(x.shape[1], config, device=DEVICE, dtype=torch.float32)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = sae(x, dead_mask=None)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        sae.set_decoder_norm_to_unit_norm()

    return step


def main():
    if not torch.cuda.is_available():
        print("No CUDA GPU here: this benchmark needs one.")
        return 1
    ceiling = bf16_matmul_ceiling()
    sparsify = load_sparsify()
    print(f"{torch.cuda.get_device_name()}, bf16 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s")
    if sparsify is None:
        print(f"({ABSENT})")
    print(
        f"{'shape':<24}{'step':<16}{'ms':>8}{'TFLOP/s':>9}{'/ceiling':>9}{'/plain':>8}{'syncs':>7}"
    )
    for batch, n_features, n_latents, k in SHAPES:
        x = torch.randn(batch, n_features, device=DEVICE)
        steps = {"plain relu": plain_relu_step(x, n_latents)}
        for name, sparsifier in [
            ("relu", ReLU()),
            ("jumprelu", JumpReLU(n_latents, bandwidth=0.001)),
            ("batchtopk", BatchTopK(k)),
            ("topk", TopK(k)),
        ]:
            steps[f"sksae {name}"] = sksae_step(sparsifier, x, n_latents)
        if sparsify is not None:
            steps["sparsify topk"] = sparsify_step(sparsify, x, n_latents, k)
        shape = f"B{batch} d{n_features} n{n_latents} k{k}"
        times = {}
        for name, step in steps.items():
            times[name] = milliseconds(step)
            rate = 12 * batch * n_features * n_latents / times[name] * 1e3
            print(
                f"{shape:<24}{name:<16}{times[name]:>8.2f}{rate / 1e12:>9.0f}"
                f"{rate / ceiling:>9.2f}{times['plain relu'] / times[name]:>8.2f}"
                f"{host_syncs(step):>7.2f}"
            )
        if sparsify is not None:
            ratio = times["sparsify topk"] / times["sksae topk"]
            print(f"{shape:<24}sksae topk steps/s over sparsify's: {ratio:.2f}")
        del steps
        torch.cuda.empty_cache()
    print(f"torch {torch.__version__}, date {datetime.date.today().isoformat()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
