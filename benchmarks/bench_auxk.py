"""What the AuxK loss does to dead latents in a deliberately wide dictionary.

Issue #4 asks that, on ``make_sparse_superposition`` with ``n_components = 8 * n_sources``,
AuxK leave at least 3 times fewer dead latents than no AuxK, at equal or better FVU. This
script fits the same TopK model with the default AuxK (``aux_coef=1/32``) and without it
(``aux_coef=0``), same data and seed, and prints for each the fraction of latents that
never fire on the training data, the FVU, the epochs run, and the ratio of the dead
fractions (no AuxK over AuxK: 3 or more would meet the issue's bar).

Rows: 64 sources in R^32 (3 active per sample, 20,000 samples) and 512 latents, with
``k=3`` (as many latents per sample as active sources) and ``k=8`` (spare slots that
revived latents could take); ``--full`` adds the issue's quality data (256 sources in
R^64, 5 active, 50,000 samples) with 2048 latents and ``k=5``, about 4 minutes more.

Run from the repository root::

    python benchmarks/bench_auxk.py           # about 1.5 minutes on 2 cores
    python benchmarks/bench_auxk.py --full
    python benchmarks/bench_auxk.py --full --max-iter 10   # the same fits cut short
"""

import argparse
import math

import numpy as np
from _machine import machine_line

from sksae import SparseAutoencoderTransformer
from sksae.datasets import make_sparse_superposition
from sksae.metrics import dead_fraction, fvu

#: (n_samples, n_features, n_sources, n_active, k) of each row.
ROWS = [(20_000, 32, 64, 3, 3), (20_000, 32, 64, 3, 8)]
FULL_ROW = (50_000, 64, 256, 5, 5)


def fit(X, n_components, k, aux_coef, seed, max_iter):
    """Dead fraction on ``X``, FVU and epochs of a TopK fit."""
    sae = SparseAutoencoderTransformer(
        n_components=n_components, k=k, aux_coef=aux_coef, max_iter=max_iter, random_state=seed
    ).fit(X)
    codes = sae.transform(X)
    return dead_fraction(codes), fvu(X, sae.inverse_transform(codes)), sae.n_iter_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="add the 50k, 2048-latent row")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the models")
    parser.add_argument(
        "--max-iter", type=int, default=200, help="epochs at most (the default's 200)"
    )
    args = parser.parse_args(argv)
    rows = [*ROWS, FULL_ROW] if args.full else ROWS
    print(
        f"{'data (samples, features, sources, active)':<44}{'latents':>8}{'k':>4}"
        f"{'dead AuxK':>11}{'dead none':>11}{'none/AuxK':>11}{'FVU AuxK':>10}{'FVU none':>10}"
        f"{'epochs':>9}"
    )
    for n_samples, n_features, n_sources, n_active, k in rows:
        X = make_sparse_superposition(
            n_samples, n_features, n_sources, n_active, random_state=args.seed
        ).astype(np.float32)
        n_components = 8 * n_sources
        dead_auxk, fvu_auxk, epochs_auxk = fit(X, n_components, k, 1 / 32, args.seed, args.max_iter)
        dead_none, fvu_none, epochs_none = fit(X, n_components, k, 0.0, args.seed, args.max_iter)
        # inf: AuxK revived every latent that died without it; nan: none died either way.
        ratio = dead_none / dead_auxk if dead_auxk > 0 else math.inf if dead_none else math.nan
        data = f"({n_samples}, {n_features}, {n_sources}, {n_active})"
        print(
            f"{data:<44}{n_components:>8}{k:>4}{dead_auxk:>11.3f}{dead_none:>11.3f}"
            f"{ratio:>11.2f}{fvu_auxk:>10.4f}{fvu_none:>10.4f}"
            f"{f'{epochs_auxk}/{epochs_none}':>9}"
        )
    print(
        "dead: fraction of latents never active on the training data; none/AuxK: the issue "
        "asks for >= 3 at equal or better FVU; epochs: with AuxK / without"
    )
    print(f"{machine_line()}, seed {args.seed}")


if __name__ == "__main__":
    main()
