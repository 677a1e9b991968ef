"""Networks only (no diffusion maths): GLIDE's UNet and text transformer, PITI's condition encoder.

Build them with :func:`piti.create_model`; the classes are exported for type checks and
advanced use.
"""

from piti.nn.encoder import ConditionEncoder
from piti.nn.models import GLIDEModel, PITIModel
from piti.nn.text import Transformer
from piti.nn.unet import UNet

__all__ = ["ConditionEncoder", "GLIDEModel", "PITIModel", "Transformer", "UNet"]
