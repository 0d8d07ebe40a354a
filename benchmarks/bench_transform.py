"""The cost of the estimator around the encoder: transform against a bare torch encoder.

A fitted TopK ``SparseAutoencoderTransformer`` encodes ``X`` with ``transform`` (input
validation, fixed-size padded chunks, a dense code in numpy). The bare reference does the
same arithmetic on the same arrays in one go: ``torch.addmm`` for the pre-activations
(``b_dec`` folded into the bias, which spares the input's centring), ``topk``, ``ReLU``
and a scatter over the pre-activations into a dense code. Their time ratio is what the
estimator's conventions cost (1.0 would be free).

Run from the repository root::

    python benchmarks/bench_transform.py            # 100k samples, d=512, n=4096, k=32
    python benchmarks/bench_transform.py --quick    # 20k samples

Each figure is the best of ``--repeats`` rounds, which alternate the two encoders.
"""

import argparse
import time
from functools import partial

import numpy as np
import torch
from _machine import machine_line

from sksae import SparseAutoencoderTransformer


def best_of_interleaved(functions, repeats):
    """The result of each function and its best time over ``repeats`` rounds, each round
    calling every function once: a drift of the shared machine's speed then weighs on
    all of them alike, where runs of one function after the other's saw it alone."""
    results, best = [None] * len(functions), [float("inf")] * len(functions)
    for _ in range(repeats):
        for i, fn in enumerate(functions):
            start = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return results, best


def bare_encoder(sae):
    """The TopK encoder on torch tensors, with nothing around it."""
    W_enc = torch.from_numpy(sae.encoder_weights_)
    bias = torch.from_numpy(sae.encoder_bias_ - sae.encoder_weights_ @ sae.decoder_bias_)

    def encode(X):
        with torch.inference_mode():
            pre = torch.addmm(bias, torch.from_numpy(X), W_enc.T)
            values, indices = pre.topk(sae.k, dim=1, sorted=False)
            # The code written over the pre-activations: no second [n, n_latents] tensor.
            return pre.zero_().scatter_(1, indices, values.relu()).numpy()

    return encode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 samples")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default: 5)")
    args = parser.parse_args(argv)
    n_samples, n_features, n_components, k = (20_000 if args.quick else 100_000), 512, 4096, 32
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    # Two short epochs on a sample fit a model; the weights do not change the timing.
    sae = SparseAutoencoderTransformer(n_components, k=k, max_iter=2, random_state=0)
    sae.fit(X[:8192])

    (codes, reference), (ours, bare) = best_of_interleaved(
        [lambda: sae.transform(X), partial(bare_encoder(sae), X)], args.repeats
    )
    agree = np.mean(np.count_nonzero(codes, axis=1) == np.count_nonzero(reference, axis=1))
    gflop = 2 * n_samples * n_features * n_components / 1e9
    print(f"transform of {n_samples} x {n_features} into {n_components} latents, k={k}, float32")
    print(f"{'encoder':<34}{'seconds':>9}{'GFLOP/s':>9}{'ratio':>7}")
    rows = [("bare torch addmm + topk", bare), ("SparseAutoencoderTransformer", ours)]
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>9.3f}{gflop / seconds:>9.1f}{seconds / bare:>7.2f}")
    print(f"rows with the same number of active latents: {agree:.4f}")
    print(machine_line())


if __name__ == "__main__":
    main()
