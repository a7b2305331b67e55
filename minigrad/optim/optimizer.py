"""Optimizer: parameter groups, per-parameter state, zero_grad and state_dict, as in ``torch.optim``.

Subclasses write one method, ``_update(param, grad, state, group)``, that
changes ``param.data`` in place from the gradient array; the base class walks
the groups and skips parameters without a gradient. Updates work on raw
arrays, so they record no graph and run on whatever device the parameter is on.
"""
from .. import backend
from ..tensor import Tensor, enable_grad


class Optimizer:
    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}  # Parameter -> dict of its buffers (keyed by identity: Tensor hashes by id)
        self.param_groups = []
        params = [params] if isinstance(params, Tensor) else list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for group in (params if isinstance(params[0], dict) else [{"params": params}]):
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a dict with 'params' and optional per-group options (the rest come from the defaults)."""
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        ids = [id(p) for p in group["params"]]
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len(set(ids)) != len(ids) or seen.intersection(ids):
            raise ValueError("some parameters appear more than once (in one group or in several groups)")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data[...] = 0

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad.data, self._state_of(p), group)
        return loss

    def _update(self, param, grad, state, group):
        raise NotImplementedError

    def _state_of(self, param):
        """The parameter's state, moved to its device first if the model was moved (``Module.to``)."""
        state = self.state.setdefault(param, {})
        for key, value in state.items():
            if hasattr(value, "shape") and backend.device_of(value) != param.device:
                state[key] = backend.to_device(value, param.device)
        return state

    # ------------------------------------------------------------ state dict
    def state_dict(self):
        """``{"state": {index: {name: Tensor or number}}, "param_groups": [{..., "params": [index]}]}``.

        Parameters are numbered in group order, as in PyTorch. The state
        Tensors share memory with the optimizer (no copy); ``load_state_dict``
        copies, so a loaded optimizer never aliases the one it came from.
        """
        index, groups = {}, []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: {k: Tensor._wrap(v) if hasattr(v, "shape") else v for k, v in s.items()}
                 for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore the state and the group options; validates everything before changing anything."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"the optimizer has {len(self.param_groups)}")
        by_index = {}
        for number, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(f"loaded state dict contains a parameter group ({number}) of "
                                 f"{len(saved['params'])} parameters that doesn't match the size of "
                                 f"optimizer's group ({len(group['params'])})")
            by_index.update(zip((int(i) for i in saved["params"]), group["params"]))
        new_state = {}
        for index, values in state_dict["state"].items():
            if int(index) not in by_index:
                raise ValueError(f"loaded state dict has state for parameter {index}, which no group lists")
            param = by_index[int(index)]
            new_state[param] = {key: _state_value(key, value, param, index) for key, value in values.items()}
        self.state = new_state
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for number, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {number}")
            lines += [f"    {key}: {group[key]}" for key in sorted(group) if key != "params"]
        return "\n".join(lines) + "\n)"


def _state_value(key, value, param, index):
    """A copy of one saved state entry, on the parameter's device and (if floating) in its dtype."""
    if key == "step":
        return int(value.item() if hasattr(value, "item") else value)
    array = value.data if isinstance(value, Tensor) else value
    if not hasattr(array, "shape"):
        return value
    if tuple(array.shape) != param.shape:
        raise ValueError(f"loaded state '{key}' of parameter {index} has shape {tuple(array.shape)}, "
                         f"the parameter has shape {param.shape}")
    array = backend.to_device(array, param.device)
    dtype = param.dtype if array.dtype.kind == "f" else array.dtype
    return param.xp.array(array, dtype=dtype, copy=True)

