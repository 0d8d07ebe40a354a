"""Training throughput of ``SparseAutoencoderTransformer.fit`` against the hardware.

Shape (issue #5): batches of B=4096 rows, d=512 features, n=4096 latents, k=32.
A dense training step costs about ``12 * B * d * n`` FLOPs (six ``[B,d]x[d,n]``-sized
products, forward and backward of the encoder and the decoder). For each row the script
reports steps per second and the *dense-equivalent rate*, ``12 * B * d * n * steps/s``,
as a fraction of the in-process matmul limit measured in the same run (the sustained
rate of the three product shapes a step uses, total FLOPs over total time). A dense
step does five of the six products (the input's gradient is not needed), so it tops out
near 1.2; a TopK step that touches only the ``k`` chosen latents in the decoder and in
the encoder's backward pass can go beyond it (its floor is one dense encoder matmul and
a topk).

Rows, for float32 and float64:

* ``plain torch``: a bare training loop written here in plain torch (no sksae): ReLU + L1
  with dense matmuls, and TopK with an ``embedding_bag`` decoder and a CSR ``S^T @ X``
  encoder backward. Adam, unit-norm decoder rows, one gather of a shuffled batch per step.
* ``sksae``: the estimator's ``fit`` on ``steps * B`` rows for two epochs (input
  validation, the geometric-median initialisation and the per-epoch statistics included),
  for each ``activation``, and in float32 with ``autocast_dtype="bfloat16"`` (the
  encoder's matmul in bfloat16) for every ``activation``.

A column gives the memory each row faulted in per step (the process's minor page
faults, from ``getrusage``): on the CPU a fresh tensor of over 32 MB is freshly mapped
memory, whose faults cost about 20 ms a step per ``[B, n]`` float32 tensor here.

Run from the repository root::

    python benchmarks/bench_throughput.py            # 16 steps per row, 3 rounds: ~15 min
    python benchmarks/bench_throughput.py --float32-only    # ~6 min
    python benchmarks/bench_throughput.py --quick    # 4 steps per row, float32 only
    # on a CPU without bfloat16 products in hardware (AVX2 only), which emulates them
    # 5 to 30 times slower than float32: the float32 rows alone
    python benchmarks/bench_throughput.py --float32-only --no-bfloat16
"""

import argparse
import resource
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from _machine import machine_line

from sksae import SparseAutoencoderTransformer

BATCH, N_FEATURES, N_LATENTS, K = 4096, 512, 4096, 32
DENSE_STEP_FLOP = 12 * BATCH * N_FEATURES * N_LATENTS


def matmul_limit(dtype, repeats=5):
    """Sustained FLOP/s of the three product shapes of a training step, in turn.

    Each shape runs ``repeats`` times back to back (after a warm-up call); the limit is
    the total FLOPs over the total time, what a step made of these products alone would
    reach on this machine now.
    """
    a = torch.randn(BATCH, N_FEATURES, dtype=dtype)
    w = torch.randn(N_LATENTS, N_FEATURES, dtype=dtype)
    g = torch.randn(BATCH, N_LATENTS, dtype=dtype)
    products = [lambda: a @ w.T, lambda: g.T @ a, lambda: g @ w]
    for product in products:
        product()
    start = time.perf_counter()
    for product in products:
        for _ in range(repeats):
            product()
    seconds = time.perf_counter() - start
    return len(products) * repeats * 2 * BATCH * N_FEATURES * N_LATENTS / seconds


class _CsrEncoderTopK(torch.autograd.Function):
    """TopK of ``x @ W^T + b`` whose backward touches the chosen latents only."""

    @staticmethod
    def forward(ctx, x, W, b, k):
        values, indices = torch.addmm(b, x, W.T).topk(k, dim=1, sorted=False)
        ctx.save_for_backward(x, indices)
        ctx.n_latents = W.shape[0]
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _):
        x, indices = ctx.saved_tensors
        rows, k = indices.shape
        flat = indices.flatten()
        grad = grad_values.contiguous().flatten()
        starts = torch.arange(0, rows * k + 1, k)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            S = torch.sparse_csr_tensor(
                starts, flat, grad, (rows, ctx.n_latents), check_invariants=False
            )
        grad_b = grad.new_zeros(ctx.n_latents).index_add_(0, flat, grad)
        return None, S.t() @ x, grad_b, None


def minor_faults():
    """Pages the process has faulted in so far: fresh memory it has touched."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def plain_torch_fit(X, activation, n_steps, seed=0):
    """A bare SAE training loop on ``X`` (a float tensor); returns the seconds it took."""
    generator = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(N_LATENTS, N_FEATURES, generator=generator, dtype=X.dtype)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec.requires_grad_()
    W_enc = W_dec.detach().clone().requires_grad_()
    b_enc = torch.zeros(N_LATENTS, dtype=X.dtype, requires_grad=True)
    b_dec = X[:BATCH].mean(dim=0).requires_grad_()
    optimizer = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)
    start = time.perf_counter()
    order = torch.randperm(len(X), generator=generator)
    for step in range(n_steps):
        x = X[order[step * BATCH : (step + 1) * BATCH]]
        bias = b_enc - W_enc @ b_dec
        if activation == "relu":
            code = F.relu(torch.addmm(bias, x, W_enc.T))
            x_hat = torch.addmm(b_dec, code, W_dec)
            penalty = 1e-3 * code.sum(dim=1).mean()
        else:
            values, indices = _CsrEncoderTopK.apply(x, W_enc, bias, K)
            code = F.relu(values)
            x_hat = F.embedding_bag(indices, W_dec, per_sample_weights=code, mode="sum") + b_dec
            penalty = 0.0
        loss = (x - x_hat).square().sum(dim=1).mean() + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    loss.item()
    return time.perf_counter() - start


def sksae_fit(X, activation, n_steps, seed=0, autocast_dtype=None):
    """``fit`` for two epochs of ``n_steps / 2`` batches; returns (seconds, steps run)."""
    sae = SparseAutoencoderTransformer(
        N_LATENTS,
        activation=activation,
        k=K,
        batch_size=BATCH,
        max_iter=2,
        tol=0.0,
        autocast_dtype=autocast_dtype,
        random_state=seed,
    )
    rows = X[: BATCH * (n_steps // 2)]
    start = time.perf_counter()
    sae.fit(rows)
    return time.perf_counter() - start, sae.n_steps_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 steps per row, float32 only")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats (median)")
    parser.add_argument("--float32-only", action="store_true", help="skip the float64 rows")
    parser.add_argument(
        "--no-bfloat16", action="store_true", help="skip the bfloat16 autocast rows"
    )
    args = parser.parse_args(argv)
    n_steps = 4 if args.quick else 16
    float32_only = args.quick or args.float32_only
    dtypes = [torch.float32] if float32_only else [torch.float32, torch.float64]
    # Heavy-tailed, low-rank-ish data: a few latents per row fire, like model activations.
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((N_FEATURES, N_FEATURES)) / np.sqrt(N_FEATURES)
    X64 = rng.standard_t(df=4, size=(BATCH * n_steps, N_FEATURES)) @ mixing
    rows = [("plain torch", "relu"), ("plain torch", "topk")]
    rows += [("sksae fit", activation) for activation in ["relu", "topk", "batchtopk", "jumprelu"]]
    if not args.no_bfloat16:
        rows += [
            ("sksae bf16", activation) for activation in ["topk", "relu", "batchtopk", "jumprelu"]
        ]

    print(f"training steps of B={BATCH}, d={N_FEATURES}, n={N_LATENTS}, k={K}")
    print(f"{'dtype':<9}{'trainer':<13}{'activation':<11}{'steps/s':>8}{'rate/limit':>11}", end="")
    print(f"{'vs plain':>9}{'faults MB/step':>15}")
    for dtype in dtypes:
        X = torch.from_numpy(X64).to(dtype)
        # Rounds interleave every row, so that a slow spell of a shared machine hits all
        # of them; each figure is the median over the rounds.
        # bfloat16 autocast leaves float64 models alone: no row of its own there.
        dtype_rows = [row for row in rows if dtype == torch.float32 or row[0] != "sksae bf16"]
        limits = []
        rates, faulted = {row: [] for row in dtype_rows}, {row: [] for row in dtype_rows}
        for _ in range(args.rounds):
            limits.append(matmul_limit(dtype))
            for trainer, activation in dtype_rows:
                faults = minor_faults()
                if trainer == "plain torch":
                    seconds, steps = plain_torch_fit(X, activation, n_steps), n_steps
                else:
                    autocast_dtype = "bfloat16" if trainer == "sksae bf16" else None
                    seconds, steps = sksae_fit(X.numpy(), activation, n_steps, 0, autocast_dtype)
                rates[trainer, activation].append(steps / seconds)
                faulted[trainer, activation].append((minor_faults() - faults) / steps)
        limit = statistics.median(limits)
        rate = {row: statistics.median(values) for row, values in rates.items()}
        page_mb = resource.getpagesize() / 2**20
        name = str(dtype).removeprefix("torch.")
        for trainer, activation in dtype_rows:
            plain = rate.get(("plain torch", activation), rate["plain torch", "relu"])
            steps_per_s = rate[trainer, activation]
            faulted_mb = statistics.median(faulted[trainer, activation]) * page_mb
            print(
                f"{name:<9}{trainer:<13}{activation:<11}{steps_per_s:>8.2f}"
                f"{steps_per_s * DENSE_STEP_FLOP / limit:>11.2f}{steps_per_s / plain:>9.2f}"
                f"{faulted_mb:>15.0f}"
            )
        print(f"{name:<9}matmul limit {limit / 1e9:.0f} GFLOP/s (median of {args.rounds})")
    print(
        "'vs plain': steps/s over the plain-torch loop of the same activation and dtype "
        "(relu's for batchtopk and jumprelu, which train dense codes; the float32 loop's "
        "for the bf16 rows)"
    )
    print(machine_line())


if __name__ == "__main__":
    main()
