"""minigrad.nn: Module, Parameter and the layers, named and defaulted like ``torch.nn``."""
from . import init
from .activation import Identity, LeakyReLU, ReLU
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout, Dropout2d
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Module, ModuleList, Parameter, Sequential
from .norm import BatchNorm2d
from .pooling import AvgPool2d, MaxPool2d, MaxUnpool2d
from .upsampling import Upsample
from .. import functional  # noqa: F401  (minigrad.nn.functional, as torch.nn.functional)
