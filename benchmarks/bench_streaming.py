"""Training from a stream of chunks with ``partial_fit``, against ``fit`` on the same data.

Data: ``make_sparse_superposition(50_000, 64, 256, 5, noise=0.01)`` in float32, the quality
data of ``bench_vs_dictionary_learning.py``. Three TopK models (``n_components=512, k=5``,
defaults otherwise, same seed):

1. ``fit`` for 20 epochs (``max_iter=20, max_no_improvement=None``): the reference.
2. ``partial_fit`` on 7 chunks of the data, 20 passes, constant learning rate (the
   default, ``partial_fit_samples=None``).
3. The same calls with ``partial_fit_samples = 20 * 50_000``: ``fit``'s schedule laid
   over the stream.

It prints each model's minibatch steps, its FVU on the data and the ratio of that FVU to
``fit``'s (1 or below: as good as ``fit``). The chunks, of 7142 or 7143 samples, are not
multiples of ``batch_size``: each ends in a partial minibatch, and the plan is reckoned
in samples, not steps.

Run from the repository root (about 1.5 minutes on 2 cores)::

    python benchmarks/bench_streaming.py
"""

import argparse

import numpy as np
from _machine import machine_line

from sksae import SparseAutoencoderTransformer
from sksae.datasets import make_sparse_superposition
from sksae.metrics import fvu

N_PASSES = 20
N_CHUNKS = 7


def reconstruction_fvu(sae, X):
    return fvu(X, sae.inverse_transform(sae.transform(X)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the models")
    args = parser.parse_args(argv)
    X = make_sparse_superposition(50_000, 64, 256, 5, noise=0.01, random_state=args.seed)
    X = X.astype(np.float32)
    params = dict(n_components=512, k=5, random_state=args.seed)

    fitted = SparseAutoencoderTransformer(max_iter=N_PASSES, max_no_improvement=None, **params).fit(
        X
    )
    rows = [(f"fit, {N_PASSES} epochs", reconstruction_fvu(fitted, X), fitted.n_steps_)]
    for label, plan in [
        ("partial_fit, constant learning rate", None),
        (f"partial_fit, partial_fit_samples={N_PASSES * len(X)}", N_PASSES * len(X)),
    ]:
        streamed = SparseAutoencoderTransformer(partial_fit_samples=plan, **params)
        for _ in range(N_PASSES):
            for chunk in np.array_split(X, N_CHUNKS):
                streamed.partial_fit(chunk)
        rows.append((label, reconstruction_fvu(streamed, X), streamed.n_steps_))

    print(
        f"make_sparse_superposition(50000, 64, 256, 5, noise=0.01), TopK n=512 k=5; "
        f"{N_PASSES} passes, the stream in {N_CHUNKS} chunks"
    )
    print(f"{'model':<48}{'steps':>8}{'FVU':>9}{'FVU / fit':>11}")
    for label, error, steps in rows:
        print(f"{label:<48}{steps:>8}{error:>9.4f}{error / rows[0][1]:>11.3f}")
    print(f"{machine_line()}, seed {args.seed}")


if __name__ == "__main__":
    main()
