"""sksae: sparse autoencoders as scikit-learn estimators, trained with PyTorch."""

from ._external import export, load_external
from ._outlier import SparseAutoencoderOutlierDetector
from ._persistence import load, save
from ._transformer import SparseAutoencoderTransformer

__version__ = "0.1.0.dev0"

__all__ = [
    "SparseAutoencoderOutlierDetector",
    "SparseAutoencoderTransformer",
    "__version__",
    "export",
    "load",
    "load_external",
    "save",
]
