"""Where a TopK encoder's reconstruction error comes from: its selection, not its values.

Issue #4 asks a TopK SAE with ``k=5`` and default parameters to reach an FVU of 0.06 on
``make_sparse_superposition(50_000, 64, 256, 5)``; its encoder reaches about 0.094. This
script takes the encoder's code apart on that data. Each row keeps one part of a 5-sparse
code (which atoms, "the selection") and replaces the other (their values), and prints the
FVU of the reconstruction over the training data:

1. The true sources: each sample's 5 largest with their true magnitudes, over the true
   directions. No code of 5 nonzeros does much better.
2. The true selection, each value read by a matched filter ``max(<d_i, x>, 0)``.
3. The true selection, the values given by the best affine map of ``x``, one map for all
   samples (``W x + b``, fitted by least squares; values may be negative): what a linear
   encoder's values could reach if its selection were perfect.
4. ``SparseAutoencoderTransformer(n_components=512, k=5)``, defaults otherwise: the
   encoder's own selection and values.
5. The selection of row 4, values by the best affine map (as in row 3, started from the
   encoder's weights).
6. The selection of row 4, values refitted per sample by non-negative least squares
   (``transform_algorithm="pursuit", transform_n_candidates=5``).
7. The model of row 4 with ``transform_algorithm="pursuit"`` (20 candidates).
8. A TopK encoder (``k=5``) trained by a plain-torch loop against the true directions
   held fixed as its decoder (Adam, lr 1e-3, batch 256, the rate decaying linearly to
   zero over the last 20% of the steps).

Rows 3 and 5 fit by L-BFGS in float64 from the matched filter and from the encoder's
weights; the loss they started from and the one they reached are printed.

Run from the repository root (about 2.5 minutes on 2 cores; ``--quick``: 10,000 samples)::

    python benchmarks/bench_amortisation_gap.py
"""

import argparse
import math

import numpy as np
import torch
from _machine import machine_line

from sksae import SparseAutoencoderTransformer
from sksae.datasets import make_sparse_superposition
from sksae.metrics import fvu

K = 5


def reconstruct(values, selection, mask, dictionary, offset):
    """``sum_j mask * values * dictionary[selection]`` per sample, plus ``offset``."""
    return torch.einsum("sj,sjf->sf", values * mask, dictionary[selection]) + offset


def best_affine_values(X, selection, mask, dictionary, offset, W, b, max_iter):
    """The affine map ``W x + b`` whose values at each sample's ``selection`` reconstruct
    ``X`` best (least squares, L-BFGS from ``W, b``): FVU at the start and at the end."""
    X, dictionary, offset = (
        torch.as_tensor(a, dtype=torch.float64) for a in (X, dictionary, offset)
    )
    selection, mask = torch.as_tensor(selection), torch.as_tensor(mask, dtype=torch.float64)
    W = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    total = (X - X.mean(0)).square().sum()
    centred = X - offset

    def loss():
        values = torch.einsum("sf,sjf->sj", centred, W[selection]) + b[selection]
        return (X - reconstruct(values, selection, mask, dictionary, offset)).square().sum() / total

    start = loss().item()
    optimizer = torch.optim.LBFGS(
        [W, b], max_iter=max_iter, history_size=50, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        return start, loss().item()


def plain_encoder_against(directions, X, epochs, seed):
    """FVU of a TopK encoder trained by a bare loop with ``directions`` as fixed decoder."""
    generator = torch.Generator().manual_seed(seed)
    X, D = torch.as_tensor(X), torch.as_tensor(directions, dtype=torch.float32)
    W, b = D.clone().requires_grad_(), torch.zeros(len(D), requires_grad=True)
    optimizer = torch.optim.Adam([W, b], lr=1e-3)
    batch_size = 256
    n_steps = epochs * math.ceil(len(X) / batch_size)
    decay_steps = 0.2 * n_steps

    def encode(x):
        top = (x @ W.T + b).topk(K, dim=1)
        return top.values.relu(), top.indices

    step = 0
    for _ in range(epochs):
        for rows in torch.randperm(len(X), generator=generator).split(batch_size):
            values, selection = encode(X[rows])
            x_hat = reconstruct(values, selection, 1.0, D, 0.0)
            loss = (X[rows] - x_hat).square().sum(1).mean()
            optimizer.param_groups[0]["lr"] = 1e-3 * min(1.0, (n_steps - step) / decay_steps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        values, selection = encode(X)
        return fvu(X.numpy(), reconstruct(values, selection, 1.0, D, 0.0).numpy())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 samples")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the models")
    parser.add_argument("--lbfgs-iter", type=int, default=200, help="L-BFGS iterations")
    parser.add_argument("--plain-epochs", type=int, default=30, help="epochs of row 8")
    args = parser.parse_args(argv)
    n_samples = 10_000 if args.quick else 50_000
    X, directions, sources = make_sparse_superposition(
        n_samples, 64, 256, K, random_state=args.seed, return_sources=True
    )
    X = X.astype(np.float32)
    rows = []

    true_top = torch.as_tensor(sources).topk(K, dim=1)
    true_selection, true_mask = true_top.indices, (true_top.values > 0).double()
    D = torch.as_tensor(directions)
    truth = reconstruct(true_top.values, true_selection, true_mask, D, 0.0)
    rows.append(("true selection, true values (the floor at 5 nonzeros)", fvu(X, truth.numpy())))
    matched = torch.einsum("sf,sjf->sj", torch.as_tensor(X, dtype=torch.float64), D[true_selection])
    matched = reconstruct(matched.clamp_min(0), true_selection, true_mask, D, 0.0)
    rows.append(("true selection, matched-filter values", fvu(X, matched.numpy())))
    start, end = best_affine_values(
        X,
        true_selection,
        true_mask,
        directions,
        np.zeros(64),
        directions,
        np.zeros(256),
        args.lbfgs_iter,
    )
    rows.append((f"true selection, best affine values (from {start:.4f})", end))

    sae = SparseAutoencoderTransformer(n_components=512, k=K, random_state=args.seed).fit(X)
    codes = sae.transform(X)
    rows.append(
        (
            f"sksae TopK k=5 n=512, encoder ({sae.n_iter_} epochs)",
            fvu(X, sae.inverse_transform(codes)),
        )
    )
    selection = np.argpartition(-codes, K - 1, axis=1)[:, :K]
    mask = np.take_along_axis(codes, selection, axis=1) > 0
    start, end = best_affine_values(
        X,
        selection,
        mask,
        sae.components_,
        sae.decoder_bias_,
        sae.encoder_weights_,
        sae.encoder_bias_,
        args.lbfgs_iter,
    )
    rows.append((f"  its selection, best affine values (from {start:.4f})", end))
    for n_candidates, name in [
        (K, "  its selection, NNLS values (refit)"),
        (20, "  pursuit, 20 candidates"),
    ]:
        sae.set_params(transform_algorithm="pursuit", transform_n_candidates=n_candidates)
        rows.append((name, fvu(X, sae.inverse_transform(sae.transform(X)))))

    plain = plain_encoder_against(directions, X, args.plain_epochs, args.seed)
    rows.append(
        (f"plain TopK encoder, true directions as decoder ({args.plain_epochs} epochs)", plain)
    )

    print(
        f"make_sparse_superposition({n_samples}, 64, 256, {K}, noise=0.01, "
        f"random_state={args.seed}), float32; codes of {K} nonzeros; FVU on the training data"
    )
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'code':<{width}}{'FVU':>8}")
    print("-" * (width + 8))
    for name, value in rows:
        print(f"{name:<{width}}{value:>8.4f}")
    print(machine_line())


if __name__ == "__main__":
    main()
