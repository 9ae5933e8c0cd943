"""medgan_utils: the tested package behind the medgan course (GANs for medical imaging)."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .utils import get_device, print_config, seed_everything, versions

__version__ = "0.1.0"
__all__ = [
    "CheckpointError", "get_device", "load_checkpoint", "print_config", "save_checkpoint",
    "seed_everything", "versions",
]
