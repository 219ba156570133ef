"""MET Explorer core: Multiple-Exit Tuning (arXiv 2409.13999) for timm Vision Transformers."""
__version__ = "0.1.0"

from .config import METConfig, TrainConfig  # noqa: E402
from .errors import METError  # noqa: E402
from .model import METModel  # noqa: E402
from .backbones import create_backbone  # noqa: E402
from .io import load_checkpoint, save_checkpoint  # noqa: E402
from .flops import exit_gmacs  # noqa: E402

__all__ = ["METConfig", "TrainConfig", "METError", "METModel", "create_backbone", "load_checkpoint",
           "save_checkpoint", "exit_gmacs", "__version__"]
