"""sksae: sparse autoencoders as scikit-learn estimators, trained with PyTorch."""

from ._outlier import SparseAutoencoderOutlierDetector
from ._persistence import load, save
from ._transformer import SparseAutoencoderTransformer

__version__ = "0.1.0.dev0"

__all__ = [
    "SparseAutoencoderOutlierDetector",
    "SparseAutoencoderTransformer",
    "__version__",
    "load",
    "save",
]
