"""What a learning-rate warm-up does to a TopK fit, at the default learning rate and above.

Data: ``make_sparse_superposition(20_000, 64, 1024, 4)`` in float32: more true directions
(1024) than latents (512), so every latent has work and a dead one is a loss. The same
TopK fit (``n_components=512, k=4``, defaults otherwise, same seed) runs at the default
learning rate and at 0.01, each without warm-up and with
``learning_rate_warmup_steps=500`` (about six epochs of 79 steps). It prints the epochs
run, the fraction of latents never active on the data and the FVU, and for each learning
rate the ratios with warm-up over without (below 1: the warm-up helped).

Run from the repository root (about 3 minutes on 2 cores)::

    python benchmarks/bench_learning_rate_warmup.py
"""

import argparse

import numpy as np
from _machine import machine_line

from sksae import SparseAutoencoderTransformer
from sksae.datasets import make_sparse_superposition
from sksae.metrics import dead_fraction, fvu

WARMUP_STEPS = 500


def fit(X, learning_rate, warmup_steps, seed):
    """Epochs, dead fraction and FVU of one TopK fit."""
    sae = SparseAutoencoderTransformer(
        n_components=512,
        k=4,
        learning_rate=learning_rate,
        learning_rate_warmup_steps=warmup_steps,
        random_state=seed,
    ).fit(X)
    codes = sae.transform(X)
    return sae.n_iter_, dead_fraction(codes), fvu(X, sae.inverse_transform(codes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the models")
    args = parser.parse_args(argv)
    X = make_sparse_superposition(20_000, 64, 1024, 4, random_state=args.seed)
    X = X.astype(np.float32)
    default_rate = SparseAutoencoderTransformer(n_components=512)._learning_rate()
    print(
        f"{'learning rate':<18}{'warm-up steps':>14}{'epochs':>8}{'dead':>8}{'FVU':>9}"
        f"{'dead ratio':>12}{'FVU ratio':>11}"
    )
    for label, rate in [(f"{default_rate:.3g} (default)", None), ("0.01", 0.01)]:
        _, dead_without, fvu_without = without = fit(X, rate, 0, args.seed)
        _, dead_with, fvu_with = with_warmup = fit(X, rate, WARMUP_STEPS, args.seed)
        for steps, (epochs, dead, error) in [(0, without), (WARMUP_STEPS, with_warmup)]:
            ratios = ""
            if steps:
                dead_ratio = dead_with / dead_without if dead_without else float("nan")
                ratios = f"{dead_ratio:>12.2f}{fvu_with / fvu_without:>11.3f}"
            print(f"{label:<18}{steps:>14}{epochs:>8}{dead:>8.3f}{error:>9.4f}{ratios}")
    print("ratios: with warm-up over without, at the same learning rate (below 1: better)")
    print(f"{machine_line()}, seed {args.seed}")


if __name__ == "__main__":
    main()
