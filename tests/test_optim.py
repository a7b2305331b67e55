"""Optimizers and LR schedulers: PyTorch parity, state_dict round trips, errors."""
import itertools
import math

import numpy as np
import pytest

import minigrad
from minigrad import nn, optim
from minigrad.optim import lr_scheduler
from tests.helpers import require_torch

SHAPES = [(3, 4), (5,)]

# every valid combination (nesterov needs momentum and no dampening)
SGD_OPTIONS = [dict(lr=0.05, momentum=m, dampening=d, weight_decay=wd, nesterov=n)
               for m, d, wd, n in itertools.product([0, 0.9], [0, 0.5], [0, 0.1], [False, True])
               if not n or (m > 0 and d == 0)]
ADAM_OPTIONS = [dict(lr=0.01, weight_decay=wd, amsgrad=a) for wd, a in itertools.product([0, 0.1], [False, True])]
ADAM_OPTIONS.append(dict(betas=(0.8, 0.99), eps=1e-6))  # and the defaults for the rest
CASES = ([("SGD", o) for o in SGD_OPTIONS] + [("Adam", o) for o in ADAM_OPTIONS]
         + [("AdamW", o) for o in ADAM_OPTIONS])


def _case_id(case):
    name, options = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in options.items())


def _start(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(6)]
    return values, grads


def _minigrad_run(name, options, values, grads, groups=False):
    params = [nn.Parameter(v.copy()) for v in values]
    spec = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.02}] if groups else params
    opt = getattr(optim, name)(spec, **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = minigrad.Tensor(g)
        opt.step()
    return [p.numpy() for p in params]


def _torch_run(name, options, values, grads, groups=False):
    torch = require_torch()
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    spec = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.02}] if groups else params
    opt = getattr(torch.optim, name)(spec, **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.torch
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_torch_float64(case):
    name, options = case
    values, grads = _start()
    for ours, theirs in zip(_minigrad_run(name, options, values, grads),
                            _torch_run(name, options, values, grads)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_generic_code_matches_torch(options):
    """With the fast paths off: the generic array code, which minigrad.kernels' SGD is checked against
    (where numba is installed the test above runs the kernel, so this is the only check of the code)."""
    from minigrad import kernels
    values, grads = _start()
    with kernels.disabled():
        ours = _minigrad_run("SGD", options, values, grads)
    for a, b in zip(ours, _torch_run("SGD", options, values, grads)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_matches_torch_float32_and_param_groups(name):
    options = dict(lr=0.1, momentum=0.9, nesterov=True) if name == "SGD" else dict(lr=0.05, amsgrad=True)
    values, grads = _start(np.float32)
    ours = _minigrad_run(name, options, values, grads, groups=True)
    theirs = _torch_run(name, options, values, grads, groups=True)
    for a, b in zip(ours, theirs):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_sgd_momentum_by_hand():
    p = nn.Parameter(np.array([1.0, 2.0]))
    opt = optim.SGD([p], lr=0.5, momentum=0.9, dampening=0.5)
    p.grad = minigrad.Tensor(np.array([1.0, -1.0]))
    opt.step()  # buffer starts as the gradient itself
    np.testing.assert_allclose(p.numpy(), [0.5, 2.5])
    opt.step()  # buf = 0.9 * buf + 0.5 * g = [1.4, -1.4]
    np.testing.assert_allclose(p.numpy(), [0.5 - 0.7, 2.5 + 0.7])


def test_adam_first_step_is_lr_times_sign():
    # after bias correction, step 1 moves every coordinate by lr * g / (|g| + eps')
    p = nn.Parameter(np.array([0.0, 0.0, 0.0]))
    opt = optim.Adam([p], lr=0.1, eps=0.0)
    p.grad = minigrad.Tensor(np.array([3.0, -0.5, 2.0]))
    opt.step()
    np.testing.assert_allclose(p.numpy(), [-0.1, 0.1, -0.1], rtol=1e-12)


def test_adamw_decays_without_gradient_signal():
    p = nn.Parameter(np.array([2.0]))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5, eps=0.0)
    p.grad = minigrad.Tensor(np.array([1.0]))
    opt.step()
    np.testing.assert_allclose(p.numpy(), [2.0 * (1 - 0.05) - 0.1])


def test_step_updates_in_place_and_skips_params_without_grad():
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    array = a.data
    (a * 2.0).sum().backward()
    opt.step()
    assert a.data is array
    np.testing.assert_array_equal(b.numpy(), np.ones(2))
    assert b not in opt.state and len(opt.state) == 1


def test_zero_grad_modes():
    p = nn.Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1)
    p.grad = minigrad.Tensor(np.full(3, 2.0))
    grad = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad
    np.testing.assert_array_equal(grad.numpy(), np.zeros(3))
    opt.zero_grad()
    assert p.grad is None


def test_step_closure_returns_loss():
    p = nn.Parameter(np.array([3.0]))
    opt = optim.SGD([p], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert loss.item() == 9.0
    np.testing.assert_allclose(p.numpy(), [3.0 - 0.25 * 6.0])


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD([], lr=0.1), "empty parameter list"),
    (lambda p: optim.SGD([p], lr=-1.0), "Invalid learning rate"),
    (lambda p: optim.SGD([p], lr=0.1, nesterov=True), "Nesterov"),
    (lambda p: optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (lambda p: optim.Adam([p], betas=(1.0, 0.9)), "beta parameter at index 0"),
    (lambda p: optim.SGD([p, p], lr=0.1), "more than once"),
    (lambda p: optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1), "more than once"),
    (lambda p: optim.SGD([p * 2.0], lr=0.1), "non-leaf"),
])
def test_constructor_errors(make, message):
    p = nn.Parameter(np.ones(2))
    with pytest.raises(ValueError, match=message):
        make(p)


# ---------------------------------------------------------------- state_dict
@pytest.mark.parametrize("name, options", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                           ("Adam", dict(lr=0.01, amsgrad=True)),
                                           ("AdamW", dict(lr=0.01))])
def test_state_dict_round_trip_through_save_continues_identically(name, options, tmp_path):
    values, grads = _start(np.float32)
    first = [nn.Parameter(v.copy()) for v in values]
    opt = getattr(optim, name)([{"params": first[:1]}, {"params": first[1:], "lr": 0.003}], **options)

    def step(params, optimizer, step_grads):
        for p, g in zip(params, step_grads):
            p.grad = minigrad.Tensor(g)
        optimizer.step()

    for g in grads[:3]:
        step(first, opt, g)
    minigrad.save(opt.state_dict(), tmp_path / "opt.npz")

    second = [nn.Parameter(p.numpy()) for p in first]
    resumed = getattr(optim, name)([{"params": second[:1]}, {"params": second[1:]}], lr=123.0)
    resumed.load_state_dict(minigrad.load(tmp_path / "opt.npz"))
    assert resumed.param_groups[1]["lr"] == 0.003 and resumed.param_groups[0]["lr"] == options["lr"]
    for g in grads[3:]:
        step(first, opt, g)
        step(second, resumed, g)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_state_dict_format_and_load_copies():
    p = nn.Parameter(np.ones(2))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = minigrad.Tensor(np.array([1.0, 2.0]))
    opt.step()
    state = opt.state_dict()
    assert state["param_groups"] == [dict(lr=0.1, momentum=0.9, dampening=0, weight_decay=0,
                                          nesterov=False, params=[0])]
    np.testing.assert_array_equal(state["state"][0]["momentum_buffer"].numpy(), [1.0, 2.0])
    other = optim.SGD([nn.Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    other.load_state_dict(state)
    (loaded,) = other.state.values()
    assert loaded["momentum_buffer"] is not opt.state[p]["momentum_buffer"]


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    p, q = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    source = optim.Adam([p, q], lr=0.5)
    p.grad, q.grad = minigrad.Tensor(np.ones(2)), minigrad.Tensor(np.ones(3))
    source.step()
    state = source.state_dict()

    target = optim.Adam([nn.Parameter(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="doesn't match the size"):
        target.load_state_dict(state)
    swapped = optim.Adam([nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=r"shape \(2,\), the parameter has shape \(3,\)"):
        swapped.load_state_dict(state)
    assert swapped.state == {} and swapped.param_groups[0]["lr"] == 0.1


def test_state_follows_module_to_dtype():
    model = nn.Linear(2, 2)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(minigrad.Tensor(np.ones((1, 2), np.float32))).sum().backward()
    opt.step()
    model.double()
    state = opt.state_dict()
    fresh = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(state)
    assert all(s["momentum_buffer"].dtype == np.float64 for s in fresh.state.values())


# ---------------------------------------------------------------- schedulers
SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("StepLR", dict(step_size=1)),
    ("PolynomialLR", dict(total_iters=7, power=0.9)),
    ("PolynomialLR", dict(total_iters=5)),
    ("CosineAnnealingLR", dict(T_max=6, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=4)),
]


def _lr_sequence(scheduler, optimizer, steps):
    lrs = [scheduler.get_last_lr()]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr())
        assert lrs[-1] == [g["lr"] for g in optimizer.param_groups]
    return np.array(lrs)


@pytest.mark.torch
@pytest.mark.parametrize("name, options", SCHEDULERS)
def test_scheduler_matches_torch(name, options):
    torch = require_torch()
    p = nn.Parameter(np.ones(1))
    opt = optim.SGD([{"params": [p]}, {"params": [nn.Parameter(np.ones(1))], "lr": 0.3}], lr=0.1)
    ours = _lr_sequence(getattr(lr_scheduler, name)(opt, **options), opt, 15)

    tp = [torch.nn.Parameter(torch.ones(1)) for _ in range(2)]
    topt = torch.optim.SGD([{"params": [tp[0]]}, {"params": [tp[1]], "lr": 0.3}], lr=0.1)
    theirs = _lr_sequence(getattr(torch.optim.lr_scheduler, name)(topt, **options), topt, 15)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-15)


def test_closed_forms_by_hand():
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=1.0)
    poly = lr_scheduler.PolynomialLR(opt, total_iters=4, power=2.0)
    np.testing.assert_allclose(_lr_sequence(poly, opt, 5)[:, 0], [1, 0.5625, 0.25, 0.0625, 0, 0])
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=1.0)
    cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    np.testing.assert_allclose(_lr_sequence(cosine, opt, 4)[:, 0], [1, 0.5, 0, 0.5, 1], atol=1e-15)


@pytest.mark.parametrize("name, options", SCHEDULERS)
def test_scheduler_state_dict_resumes(name, options, tmp_path):
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1)
    scheduler = getattr(lr_scheduler, name)(opt, **options)
    for _ in range(4):
        scheduler.step()
    minigrad.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "s.npz")
    expected = _lr_sequence(scheduler, opt, 5)

    checkpoint = minigrad.load(tmp_path / "s.npz")
    opt2 = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1)
    opt2.load_state_dict(checkpoint["optimizer"])
    resumed = getattr(lr_scheduler, name)(opt2, **options)
    resumed.load_state_dict(checkpoint["scheduler"])
    assert math.isclose(resumed.get_last_lr()[0], expected[0, 0])
    np.testing.assert_allclose(_lr_sequence(resumed, opt2, 5), expected, rtol=1e-15)


def test_scheduler_resume_with_last_epoch_needs_initial_lr():
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(opt, step_size=2, last_epoch=3)
    opt.param_groups[0]["initial_lr"] = 1.0
    scheduler = lr_scheduler.StepLR(opt, step_size=2, last_epoch=3)
    assert scheduler.last_epoch == 4 and scheduler.get_last_lr() == pytest.approx([0.01], rel=1e-12)
