"""minigrad: a small reverse-mode autograd engine on NumPy (CPU) and CuPy (GPU)."""
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # first: functional imports it
from . import backend, functional
from .backend import gpu_available
from .functional import argmax, cat, exp, log, matmul, maximum, pad, sqrt, stack, where
from .gradcheck import GradcheckError, gradcheck  # the function shadows its module's name, as intended
from .random import manual_seed
from . import nn, optim
from .nn import Parameter
from .serialization import load, save
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
