"""Conformance with PyTorch's own sample inputs: every OpInfo sample of every op minigrad has, in float64.

PyTorch's test suite describes each operator by an OpInfo whose
``sample_inputs(device, dtype, requires_grad)`` yields the inputs its authors
thought worth testing (``torch.testing._internal.common_methods_invocations.op_db``,
which needs the ``expecttest`` package). Here every such sample runs through the
minigrad op and through PyTorch: forward values, integer outputs (indices) and the
gradient of ``sum(out * v)`` (a fixed random ``v``) for every floating input that
requires grad must agree. Samples minigrad deliberately does not support are listed
in ``REFUSED``, one row each with its reason; they must raise an error that says so,
never return something.

Run ``python -m pytest tests/test_opinfo.py -s`` to see the per-op counts.
Not covered: dropout (random), the dtype casts (``double``, ``float``, ``long``, ``to``, ``item``),
and the ops minigrad does not have.
"""
import functools
import re

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from tests.helpers import require_torch

pytestmark = pytest.mark.torch


# ------------------------------------------------------------------ the ops: OpInfo name -> minigrad call
def _where(input, condition, other):  # the OpInfo's op is lambda self, condition, other: torch.where(...)
    return F.where(condition, input, other)


def _expand(input, shape):  # the OpInfo calls input.expand(shape)
    return F.expand(input, shape)


def _unpool_grad(input, *args, **kwargs):  # max_unpool2d.grad feeds pooled values with their switches
    return F.max_unpool2d(input, *args, **kwargs)


OPS = {
    "nn.functional.conv2d": F.conv2d,
    "nn.functional.conv_transpose2d": F.conv_transpose2d,
    "nn.functional.linear": lambda *a, **k: F.linear(*a, **k),
    "nn.functional.max_pool2d": F.max_pool2d,
    "nn.functional.max_unpool2d": F.max_unpool2d,
    "nn.functional.max_unpool2d.grad": _unpool_grad,
    "nn.functional.avg_pool2d": F.avg_pool2d,
    "nn.functional.adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "nn.functional.adaptive_max_pool2d": F.adaptive_max_pool2d,
    "nn.functional.interpolate.bilinear": F.interpolate,
    "nn.functional.interpolate.nearest": F.interpolate,
    "nn.functional.interpolate.nearest-exact": F.interpolate,
    "nn.functional.nll_loss": F.nll_loss,
    "nn.functional.cross_entropy": F.cross_entropy,
    "nn.functional.batch_norm": F.batch_norm,
    "nn.functional.pad.constant": F.pad,
    "nn.functional.relu": F.relu,
    "nn.functional.leaky_relu": F.leaky_relu,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "softmax": F.softmax,
    "log_softmax": F.log_softmax,
    "add": F.add,
    "sub": F.sub,
    "mul": F.mul,
    "div.no_rounding_mode": F.div,
    "pow": F.pow,
    "neg": F.neg,
    "abs": F.abs,
    "exp": F.exp,
    "log": F.log,
    "sqrt": F.sqrt,
    "clamp": F.clamp,
    "maximum": F.maximum,
    "minimum": F.minimum,
    "max.binary": F.max,
    "min.binary": F.min,
    "div.floor_rounding": F.div,
    "div.trunc_rounding": F.div,
    "softmax.with_dtype": F.softmax,
    "log_softmax.with_dtype": F.log_softmax,
    "nn.functional.batch_norm.without_cudnn": F.batch_norm,
    "nn.functional.interpolate.linear": F.interpolate,
    "nn.functional.interpolate.trilinear": F.interpolate,
    "nn.functional.interpolate.bicubic": F.interpolate,
    "nn.functional.interpolate.area": F.interpolate,
    "nn.functional.pad.reflect": F.pad,
    "nn.functional.pad.replicate": F.pad,
    "nn.functional.pad.replicate_negative": F.pad,
    "nn.functional.pad.circular": F.pad,
    "T": lambda input: input.T,
    "view": mg.Tensor.view,
    "__radd__": mg.Tensor.__radd__,
    "__rsub__": mg.Tensor.__rsub__,
    "__rmul__": mg.Tensor.__rmul__,
    "__rpow__": mg.Tensor.__rpow__,
    "__rmatmul__": mg.Tensor.__rmatmul__,
    "where": _where,
    "matmul": F.matmul,
    "sum": F.sum,
    "mean": F.mean,
    "max.reduction_no_dim": F.max,
    "max.reduction_with_dim": F.max,
    "min.reduction_no_dim": F.min,
    "min.reduction_with_dim": F.min,
    "argmax": F.argmax,
    "reshape": F.reshape,
    "flatten": F.flatten,
    "permute": F.permute,
    "transpose": F.transpose,
    "squeeze": F.squeeze,
    "squeeze.multiple": F.squeeze,
    "unsqueeze": F.unsqueeze,
    "expand": _expand,
    "cat": F.cat,
    "stack": F.stack,
}


# ------------------------------------------------------------------ samples minigrad refuses, on purpose
def _ndim(sample):
    return sample.input.ndim


def _kw(name, default=None):
    return lambda sample: sample.kwargs.get(name, default)


def _interpolate_not_4d(sample):
    return sample.input.ndim != 4


REFUSED = [
    # (op, which samples, why, what the error must say)
    *[(f"nn.functional.interpolate.{mode}", _interpolate_not_4d,
       "resampling is 2-D only: (N, C, H, W); 3-D and 5-D inputs mean 1-D and 3-D resampling",
       r"must be 4-D \(N, C, H, W\)") for mode in ("nearest", "nearest-exact")],
    ("nn.functional.batch_norm", lambda sample: sample.input.ndim < 2,
     "a 1-D input has no channel axis; batch_norm takes (N, C) or (N, C, d1, ...)", r"\(N, C\) or \(N, C, d1"),
    ("nn.functional.batch_norm.without_cudnn", lambda sample: sample.input.ndim < 2,
     "a 1-D input has no channel axis; batch_norm takes (N, C) or (N, C, d1, ...)", r"\(N, C\) or \(N, C, d1"),
    *[(f"nn.functional.interpolate.{mode}", lambda sample: True,
       "only modes nearest, nearest-exact and bilinear, on (N, C, H, W)", r"must be 4-D|mode must be one of")
      for mode in ("linear", "trilinear", "bicubic", "area")],
    *[(f"nn.functional.pad.{mode}", lambda sample: True,
       "only mode='constant' padding", r"only 'constant'") for mode in ("reflect", "replicate", "replicate_negative",
                                                                        "circular")],
    *[(f"div.{mode}", lambda sample: True,
       "no rounding_mode: minigrad's div is true division", r"rounding_mode") for mode in ("floor_rounding",
                                                                                          "trunc_rounding")],
    ("cat", lambda sample: any(t.shape == (0,) for t in sample.input) and len({t.ndim for t in sample.input}) > 1,
     "PyTorch's legacy rule skips 1-D empty tensors in cat; minigrad asks for matching shapes", r"differ outside dim"),
]


# ------------------------------------------------------------------ running one sample
def _to_minigrad(value, torch):
    if isinstance(value, torch.Tensor):
        array = value.detach().numpy().copy()
        return mg.Tensor(array, requires_grad=bool(value.requires_grad and value.is_floating_point()))
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, torch.dtype):
        return np.dtype(str(value).replace("torch.", ""))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_minigrad(v, torch) for v in value)
    if isinstance(value, dict):
        return {k: _to_minigrad(v, torch) for k, v in value.items()}
    return value


def _leaves(value, kind):
    """Every tensor in a nested sample (in order), minigrad's or torch's."""
    if isinstance(value, kind):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _leaves(v, kind)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v, kind)]
    return []


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _describe(sample, torch):
    def short(v):
        if isinstance(v, torch.Tensor):
            return f"tensor{tuple(v.shape)}:{str(v.dtype).replace('torch.', '')}"
        if isinstance(v, (list, tuple)):
            return type(v)(short(i) for i in v)
        return v
    kwargs = {k: short(v) for k, v in sample.kwargs.items()}
    return f"input={short(sample.input)} args={short(sample.args)} kwargs={kwargs}"


def _unpool_by_our_rule(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """``max_unpool2d`` where windows overlap: values sharing a switch add (minigrad's documented rule).

    PyTorch calls its own result undefined there (pytorch#80827: it keeps one of
    them, whichever its loop writes last). None where the windows do not overlap:
    then the comparison is with PyTorch's result.
    """
    kernel = F.im2col.pair(kernel_size)
    stride = kernel if stride is None or stride in ((), []) else F.im2col.pair(stride)
    if all(s >= k for s, k in zip(stride, kernel)):
        return None
    x, switches = input.detach().numpy(), indices.numpy()
    size = tuple(output_size)[-2:] if output_size is not None else tuple(
        (n - 1) * s + k - 2 * p for n, s, k, p in zip(x.shape[-2:], stride, kernel, F.im2col.pair(padding)))
    planes = np.zeros(x.shape[:-2] + (size[0] * size[1],))
    flat_planes, flat_x = planes.reshape(-1, planes.shape[-1]), x.reshape(-1, x.shape[-2] * x.shape[-1])
    for plane, values, where in zip(flat_planes, flat_x, switches.reshape(flat_x.shape)):
        np.add.at(plane, where, values)
    return [planes.reshape(x.shape[:-2] + size)]


# Ops whose PyTorch result is undefined for some samples: our rule instead, where it returns a result.
OUR_RULE = {"nn.functional.max_unpool2d": _unpool_by_our_rule, "nn.functional.max_unpool2d.grad": _unpool_by_our_rule}


def check_sample(torch, opinfo, ours, sample, rng, name=None):
    """Compare one sample; returns None or a string saying what differs."""
    t_args = (sample.input,) + tuple(sample.args)
    m_args = _to_minigrad(t_args, torch)
    m_kwargs = _to_minigrad(sample.kwargs, torch)
    t_out = _outputs(opinfo.op(*t_args, **sample.kwargs))
    m_out = _outputs(ours(*m_args, **m_kwargs))
    if len(t_out) != len(m_out):
        return f"{len(m_out)} outputs, PyTorch gives {len(t_out)}"
    rule = OUR_RULE.get(name)
    expected = rule(*t_args, **sample.kwargs) if rule else None
    for i, (a, b) in enumerate(zip(m_out, t_out)):
        a_np, b_np = np.asarray(a.numpy()), (b.detach().numpy() if expected is None else expected[i])
        if a_np.shape != b_np.shape:
            return f"output {i} has shape {a_np.shape}, PyTorch's {b_np.shape}"
        if b.is_floating_point():
            if not np.allclose(a_np, b_np, rtol=1e-7, atol=1e-10, equal_nan=True):
                return f"output {i} differs by up to {np.nanmax(np.abs(a_np - b_np)):.3g}"
        elif not np.array_equal(a_np, b_np):
            return f"integer output {i} differs: {a_np.ravel()[:8]} vs {b_np.ravel()[:8]}"
    # inputs the op updates in place (batch_norm's running statistics) must end equal too
    t_leaves = _leaves(t_args, torch.Tensor) + _leaves(sample.kwargs, torch.Tensor)
    m_leaves = _leaves(m_args, mg.Tensor) + _leaves(m_kwargs, mg.Tensor)
    for k, (a, b) in enumerate(zip(m_leaves, t_leaves)):
        if not b.requires_grad and not np.allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-10, equal_nan=True):
            return f"input {k}, updated in place, differs from PyTorch's afterwards"
    t_inputs = [t for t in t_leaves if t.requires_grad and t.is_floating_point()]
    m_inputs = [t for t in m_leaves if t.requires_grad]
    pairs = [(a, b) for a, b in zip(m_out, t_out) if b.is_floating_point() and b.requires_grad]
    if not t_inputs or not pairs:
        return None
    cotangents = [rng.standard_normal(b.shape) for _, b in pairs]
    t_loss = sum((b * torch.from_numpy(v)).sum() for (_, b), v in zip(pairs, cotangents))
    t_grads = torch.autograd.grad(t_loss, t_inputs, allow_unused=True)
    m_loss = None
    for (a, _), v in zip(pairs, cotangents):
        term = F.sum(F.mul(a, mg.Tensor(v)))
        m_loss = term if m_loss is None else F.add(m_loss, term)
    if m_loss.requires_grad:
        m_loss.backward()
    for k, (a, b) in enumerate(zip(m_inputs, t_grads)):
        expected = np.zeros(a.shape) if b is None else b.numpy()
        got = np.zeros(a.shape) if a.grad is None else a.grad.numpy()
        if not np.allclose(got, expected, rtol=1e-7, atol=1e-10, equal_nan=True):
            return f"gradient of input {k} differs by up to {np.nanmax(np.abs(got - expected)):.3g}"
    return None


def refusal(name, sample):
    for op, which, reason, match in REFUSED:
        if op == name and which(sample):
            return reason, match
    return None


@functools.lru_cache(maxsize=None)
def _op_db():
    torch = require_torch()
    pytest.importorskip("expecttest", reason="PyTorch's OpInfo samples need the expecttest package (the 'test' extra)")
    from torch.testing._internal.common_methods_invocations import op_db
    return torch, {o.name + ("." + o.variant_test_name if o.variant_test_name else ""): o for o in op_db}


@pytest.mark.parametrize("name", sorted(OPS))
def test_opinfo_samples(name, record_property):
    torch, ops = _op_db()
    opinfo = ops[name]
    rng = np.random.default_rng(0)
    passed, refused, failures = 0, 0, []
    for sample in opinfo.sample_inputs("cpu", torch.float64, requires_grad=True):
        rule = refusal(name, sample)
        if rule is not None:
            reason, match = rule
            try:
                OPS[name](*_to_minigrad((sample.input,) + tuple(sample.args), torch),
                          **_to_minigrad(sample.kwargs, torch))
            except (ValueError, TypeError, NotImplementedError, IndexError) as error:
                if re.search(match, str(error)):
                    refused += 1
                    continue
                failures.append(f"refused ({reason}) but the error does not say so: {error!r}; "
                                f"{_describe(sample, torch)}")
            else:
                failures.append(f"should be refused ({reason}) but returned; {_describe(sample, torch)}")
            continue
        try:
            problem = check_sample(torch, opinfo, OPS[name], sample, rng, name)
        except Exception as error:  # noqa: BLE001 - report every sample, not the first
            problem = f"raised {error!r}"
        if problem is None:
            passed += 1
        else:
            failures.append(f"{problem}; {_describe(sample, torch)}")
    record_property("samples", {"match": passed, "refused": refused, "fail": len(failures)})
    print(f"\n{name}: {passed} samples match PyTorch, {refused} refused as listed, {len(failures)} fail")
    assert not failures, f"{name}: {len(failures)} samples fail:\n" + "\n".join(failures[:20])
