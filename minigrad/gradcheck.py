"""Check an op's backward against central finite differences in float64."""
import numpy as np

from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    pass


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Compare ``backward`` of ``fn(*inputs)`` with central differences.

    ``inputs`` are Tensors; those with ``requires_grad`` are checked and must be
    float64. The outputs are reduced to one scalar ``sum(out * v)`` with a fixed
    random ``v``, so each perturbed element costs two forward passes. Returns
    True, or raises ``GradcheckError`` naming the input, the worst element and
    both values (returns False instead when ``raise_exception=False``).
    """
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; finite differences need float64")

    outputs = _as_tuple(fn(*inputs))
    rng = np.random.default_rng(seed)
    weights = [t.xp.asarray(rng.standard_normal(t.shape)) for t in outputs]

    def scalar():
        with no_grad():
            return sum(float((o.data * w).sum()) for o, w in zip(_as_tuple(fn(*inputs)), weights))

    saved_grads = {i: inputs[i].grad for i in checked}  # restored below: the caller's .grad is untouched
    for i in checked:
        inputs[i].grad = None
    total = None
    for o, w in zip(outputs, weights):
        if o.requires_grad:
            term = (o * Tensor._wrap(w)).sum()
            total = term if total is None else total + term
    if total is not None:
        total.backward()

    analytic_grads = {i: np.zeros(inputs[i].shape) if inputs[i].grad is None else inputs[i].grad.numpy() for i in checked}
    for i in checked:
        inputs[i].grad = saved_grads[i]

    for i in checked:
        t = inputs[i]
        analytic = analytic_grads[i]
        numeric = np.zeros(t.shape)
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs the input
        for k in range(flat.size):
            original = flat[k].item()
            flat[k] = original + eps
            plus = scalar()
            flat[k] = original - eps
            minus = scalar()
            flat[k] = original
            numeric.reshape(-1)[k] = (plus - minus) / (2 * eps)
        error = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if error.size and error.max() > 0:
            worst = np.unravel_index(int(error.argmax()), t.shape)
            message = (f"gradcheck: input {i} (shape {t.shape}) at index {tuple(int(j) for j in worst)}: "
                       f"backward gives {analytic[worst]:.10g}, finite differences give {numeric[worst]:.10g} "
                       f"(atol={atol}, rtol={rtol}); {int((error > 0).sum())} of {error.size} elements off")
            if raise_exception:
                raise GradcheckError(message)
            return False
    return True


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
