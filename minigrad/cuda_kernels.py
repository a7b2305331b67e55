"""Moved to ``minigrad.kernels.cuda``; this name stays for code that imports it."""
from .kernels.cuda import *  # noqa: F401,F403
from .kernels.cuda import KERNEL_NAMES, SOURCE, source_for, usable  # noqa: F401
