"""Optimizers with torch.optim's update rules, each step one fused launch per parameter dtype.

``SGD``, ``Adam`` and ``AdamW`` keep torch's hyper-parameter names, state names
(``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``) and ``state_dict`` layout, so a
checkpoint can be resumed and a torch optimizer's state loaded. Hyper-parameters are read at every
step and passed to the kernels as runtime values: ``opt.lr = 0.01`` between steps (or editing
``opt.param_groups[0]``) takes effect without recompiling anything.
"""
from __future__ import annotations

import torch

from .kernels import optim as _kernels
from .tape import Tensor


class Optimizer:
    """Holds the parameters (one group), their per-parameter state and the hyper-parameters."""

    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(params):
            if isinstance(p, dict):
                raise TypeError("parameter groups (dicts) are not supported: pass the parameters themselves")
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{i}] must be a tn.Tensor, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"params[{i}] does not require grad: it would never be updated")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("some parameters appear more than once")
        self.param_groups = [dict(defaults, params=params)]
        self.state: dict = {i: {} for i in range(len(params))}

    @property
    def params(self):
        return self.param_groups[0]["params"]

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"lr must be >= 0, got {value}")
        self.param_groups[0]["lr"] = float(value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (the tape then starts each backward from scratch)."""
        for p in self.params:
            p.grad = None

    def _with_grads(self):
        """(index, param, grad) for every parameter that received a gradient, grads validated."""
        out = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue  # as torch: a parameter without a gradient is left alone
            g = g.data if isinstance(g, Tensor) else g
            if g.shape != p.data.shape or g.dtype != p.data.dtype:
                raise ValueError(f"params[{i}].grad must have the parameter's shape {tuple(p.data.shape)} and "
                                 f"dtype {p.data.dtype}, got {tuple(g.shape)} {g.dtype}")
            out.append((i, p, g.contiguous()))
        return out

    def state_dict(self) -> dict:
        """torch.optim's layout: ``{"state": {index: {...}}, "param_groups": [{..., "params": [...]}]}``."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        state = {}
        for i, entry in self.state.items():
            if entry:
                state[i] = dict(entry)
                if "step" in entry:  # a Python float while training (no tensor per step); torch's form here
                    state[i]["step"] = torch.tensor(float(entry["step"]), dtype=torch.float32)
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state (from this class's or torch.optim's ``state_dict``)."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != 1:
            raise ValueError("state_dict must have exactly one entry in 'param_groups'")
        saved_group = groups[0]
        if len(saved_group.get("params", ())) != len(self.params):
            raise ValueError(f"state_dict holds {len(saved_group.get('params', ()))} parameters, "
                             f"this optimizer has {len(self.params)}")
        group = self.param_groups[0]
        for key in group:
            if key != "params" and key in saved_group:
                value = saved_group[key]
                group[key] = tuple(value) if isinstance(value, list) else value
        new_state = {i: {} for i in range(len(self.params))}
        for key, entry in state_dict.get("state", {}).items():
            i = int(key)  # a JSON round trip turns the indices into strings
            if not 0 <= i < len(self.params):
                raise ValueError(f"state_dict['state'] has an entry for parameter {i}, which does not exist")
            p = self.params[i].data
            for name, value in entry.items():
                if isinstance(value, torch.Tensor) and name != "step":
                    if value.shape != p.shape:
                        raise ValueError(f"state {name!r} of parameter {i} has shape {tuple(value.shape)}, "
                                         f"the parameter has {tuple(p.shape)}")
                    value = value.to(device=p.device, dtype=p.dtype).clone().contiguous()
                elif name == "step":
                    value = float(value)
                new_state[i][name] = value
        self.state = new_state

    def step(self):
        raise NotImplementedError


def _groups(entries, key):
    """Split (index, param, grad) entries into launch groups sharing ``key(entry)`` and a dtype."""
    groups: dict = {}
    for entry in entries:
        groups.setdefault((entry[1].data.dtype, key(entry)), []).append(entry)
    return groups.items()


class SGD(Optimizer):
    """torch.optim.SGD: weight decay, momentum (first step: buffer = gradient), dampening, Nesterov."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr is None or lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=float(lr), momentum=float(momentum), dampening=float(dampening),
                                      weight_decay=float(weight_decay), nesterov=bool(nesterov)))

    def step(self):
        group = self.param_groups[0]
        momentum = group["momentum"]
        entries = self._with_grads()
        for i, p, _ in entries:
            if momentum != 0 and "momentum_buffer" not in self.state[i]:
                self.state[i]["momentum_buffer"] = None
        # Parameters whose buffer does not exist yet take the first-step rule (buffer = gradient).
        for (dtype, first), group_entries in _groups(entries, lambda e: self.state[e[0]].get("momentum_buffer", 0)
                                                      is None):
            buffers = None
            if momentum != 0:
                for i, p, _ in group_entries:
                    if self.state[i]["momentum_buffer"] is None:
                        # Zeros, not poison: the kernel computes 0 * buffer + gradient on the first step.
                        self.state[i]["momentum_buffer"] = torch.zeros_like(p.data)
                buffers = [self.state[i]["momentum_buffer"] for i, _, _ in group_entries]
            _kernels.sgd_step([p.data for _, p, _ in group_entries], [g for _, _, g in group_entries], buffers,
                              lr=group["lr"], momentum=momentum, dampening=group["dampening"],
                              weight_decay=group["weight_decay"], nesterov=group["nesterov"], first_step=first)


class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected moment estimates; weight decay added to the gradient (L2)."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr is None or lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        super().__init__(params, dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                                      weight_decay=float(weight_decay)))

    def step(self):
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        entries = self._with_grads()
        for i, p, _ in entries:
            state = self.state[i]
            if not state:
                state["step"] = 0.0
                state["exp_avg"] = torch.zeros_like(p.data)
                state["exp_avg_sq"] = torch.zeros_like(p.data)
            state["step"] += 1.0
        # Bias corrections depend on each parameter's step count: one launch per distinct count.
        for (dtype, step), group_entries in _groups(entries, lambda e: self.state[e[0]]["step"]):
            states = [self.state[i] for i, _, _ in group_entries]
            _kernels.adam_step([p.data for _, p, _ in group_entries], [g for _, _, g in group_entries],
                               [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                               lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                               weight_decay=group["weight_decay"], step=step, decoupled=self._decoupled)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (p *= 1 - lr * weight_decay first)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
