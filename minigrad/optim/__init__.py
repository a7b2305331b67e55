"""minigrad.optim: optimizers and learning-rate schedules with ``torch.optim``'s names and formulas."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD
