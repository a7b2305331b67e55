"""minigrad.functional: the ops, named and called like ``torch.nn.functional``."""
from .activation import leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from .dropout import dropout, dropout2d
from .loss import cross_entropy, dice_loss, nll_loss
from .linear import linear
from .norm import batch_norm
from .elementwise import abs, add, clamp, div, exp, log, matmul, maximum, minimum, mul, neg, pow, sqrt, sub, where
from .reduction import argmax, max, mean, min, sum
from .shape import cat, expand, flatten, getitem, pad, permute, reshape, squeeze, stack, transpose, unsqueeze
from .conv import conv2d, conv_transpose2d
from .pooling import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d, max_unpool2d
from .upsampling import interpolate
