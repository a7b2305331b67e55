"""SGD with momentum, dampening, weight decay and Nesterov, as ``torch.optim.SGD`` computes it."""
from .. import kernels
from .optimizer import Optimizer


class SGD(Optimizer):
    """For each parameter with gradient g::

        g = g + weight_decay * p
        buf = g (first step)  or  momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov)  or  buf
        p = p - lr * g

    The momentum buffer starts as the first gradient (not zeros), as in PyTorch.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, param, grad, state, group):
        momentum = group["momentum"]
        fast = kernels.get("sgd_update", param.data)
        if fast is not None and param.data.flags.c_contiguous:  # one pass, no temporaries
            buf = state.get("momentum_buffer")
            first = momentum != 0 and buf is None
            if first:
                buf = state["momentum_buffer"] = param.xp.empty_like(param.data)
            fast(param.data, grad, buf, group["lr"], momentum, group["dampening"],
                                    group["weight_decay"], group["nesterov"], first)
            return
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * param.data
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        param.data -= group["lr"] * grad
