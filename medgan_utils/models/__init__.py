"""Models: one file per family. Models know no files and no training loop."""

from .classifier import Classifier, ClassifierConfig
from .gan import GAN, GANConfig
from .nets import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

__all__ = ["GAN", "Classifier", "ClassifierConfig", "DCGANDiscriminator", "DCGANGenerator",
           "GANConfig", "MLPDiscriminator", "MLPGenerator"]
