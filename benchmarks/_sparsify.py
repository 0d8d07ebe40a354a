"""EleutherAI sparsify, the peer of ``bench_vs_sparsify.py`` and ``bench_gpu_steps.py``.

Imported from its modules (``sparsify.sparse_coder``, ``sparsify.config``), not from the
package's ``__init__``, which pulls in its trainer and language-model dependencies: the
pip package ``eai-sparsify`` and a folder of its modules (REFERENCE.md) load alike.
"""

import importlib.metadata


def load_sparsify():
    """``(SparseCoder, SparseCoderConfig, version)``, or ``None`` where sparsify does not
    import (it is an optional benchmark dependency)."""
    try:
        from sparsify.config import SparseCoderConfig
        from sparsify.sparse_coder import SparseCoder
    except ImportError:
        return None
    try:
        version = importlib.metadata.version("eai-sparsify")
    except importlib.metadata.PackageNotFoundError:
        version = "(a folder of its modules, not the pip package)"
    return SparseCoder, SparseCoderConfig, version


#: What to print where it is absent.
ABSENT = (
    "eai-sparsify is not installed (or does not import): no sparsify to compare against. "
    "Install it after the pinned torch: pip install eai-sparsify"
)
