"""minigrad.nn: Module, Parameter and the layers, named and defaulted like ``torch.nn``."""
from . import init
from .activation import Identity, LeakyReLU, ReLU
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout, Dropout2d
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Module, ModuleList, Parameter, Sequential
from .norm import BatchNorm1d, BatchNorm2d
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d
from .upsampling import Upsample
from .sync_batchnorm import SyncBatchNorm
from . import parallel  # noqa: F401  (minigrad.nn.parallel.DistributedDataParallel)
from .. import functional  # noqa: F401  (minigrad.nn.functional, as torch.nn.functional)
