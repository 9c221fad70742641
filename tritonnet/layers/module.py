"""Module and Sequential: parameters, submodules, state_dict, with torch.nn's naming rules."""
from __future__ import annotations

from collections import OrderedDict

import torch

from .. import runtime
from ..tape import Tensor


class Module:
    """Base class: parameters are ``tn.Tensor``s with ``requires_grad=True`` assigned as attributes;
    submodules are Modules assigned as attributes. Names follow torch (``"0.weight"``)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        params, modules = self.__dict__.get("_parameters"), self.__dict__.get("_modules")
        if params is None:
            raise RuntimeError("call Module.__init__() before assigning attributes")
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Tensor) and value.requires_grad:
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        """This module and every module below it, depth first (torch's order)."""
        return [module for _, module in self.named_modules()]

    def named_parameters(self, prefix=""):
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def children(self):
        return list(self._modules.values())

    def state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """Parameter name -> the parameter's torch.Tensor (the live storage, as torch does)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy tensors into the parameters with the same names (torch modules' state_dicts work).

        Returns ``(missing_keys, unexpected_keys)``; with ``strict`` either being non-empty, or a
        shape mismatch, is a ValueError naming the keys.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own and not k.endswith("num_batches_tracked")]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        for name, param in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            if tuple(value.shape) != tuple(param.data.shape):
                raise ValueError(f"state_dict[{name!r}] has shape {tuple(value.shape)}, "
                                 f"the parameter has {tuple(param.data.shape)}")
            with torch.no_grad():
                param.data.copy_(value.to(device=param.data.device, dtype=param.data.dtype))
        return missing, unexpected

    def train(self, mode: bool = True):
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, *args, device=None, dtype=None):
        """torch's ``Module.to``: ``to(dtype)``, ``to(device)``, ``to(device, dtype)`` or
        ``to(tensor)`` (its device and dtype) convert every parameter and gradient in place, and
        return the module. tritonnet runs on one device (``runtime.device()``): any other is a
        ValueError. Build the optimizer after converting, as with torch."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, torch.Tensor):
                device, dtype = arg.device, arg.dtype
            elif isinstance(arg, (str, torch.device)):
                device = arg
            else:
                raise TypeError(f"to() takes a dtype, a device or a tensor, got {type(arg).__name__}")
        if dtype is not None and dtype not in runtime.FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, runtime.FLOAT_DTYPES))}, got {dtype}")
        if device is not None:
            try:
                kind = torch.device(device).type
            except RuntimeError:  # torch's message for a string that names no device
                kind = None
            if kind != runtime.device().type:
                raise ValueError(f"device must be tritonnet's device ({runtime.device().type}), got {device!r}")
        for p in self.parameters():
            p.data = p.data.to(dtype=dtype or p.data.dtype)
            if p.grad is not None:
                p.grad = p.grad.to(dtype=dtype or p.grad.dtype)
        return self

    def float(self):
        return self.to(torch.float32)

    def half(self):
        return self.to(torch.float16)

    def bfloat16(self):
        return self.to(torch.bfloat16)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        body = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({body})"
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def parameter(data: torch.Tensor) -> Tensor:
    """A trainable tensor on tritonnet's device."""
    return Tensor(data.to(runtime.device()), requires_grad=True)


def torch_default_parameters(weight_shape, fan_in: int, bias: bool, dtype: torch.dtype):
    """Weight and bias initialised as torch.nn.Linear/Conv2d do, drawing from torch's generator in
    the same order, so a seeded tritonnet layer equals a seeded torch one.

    kaiming_uniform_(w, a=sqrt(5)) is uniform in +-gain*sqrt(3/fan_in) with gain = sqrt(2/(1+a^2)),
    i.e. +-1/sqrt(fan_in); the bias is uniform in +-1/sqrt(fan_in). Returns (weight, bias or None).
    """
    import math

    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
    bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
    weight = parameter(torch.empty(weight_shape, dtype=dtype).uniform_(-bound, bound))
    if not bias:
        return weight, None
    bound = 1 / math.sqrt(fan_in)
    return weight, parameter(torch.empty(weight_shape[0], dtype=dtype).uniform_(-bound, bound))


class Sequential(Module):
    """Applies its modules in order; they are named ``"0"``, ``"1"``, ... like torch.nn.Sequential.

    A Conv2d directly followed by a 2x2, stride-2 MaxPool2d runs as one kernel
    (``Conv2d.forward_max_pool2d``: the pool in the convolution's epilogue, the full-size activation
    never written), with the same results as the two layers one after the other. Both stay
    children under their own names. ``fuse_conv_pool = False`` (on the instance or the class)
    runs them separately.
    """

    fuse_conv_pool = True

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, argument {i} is {type(m).__name__}")
            setattr(self, str(i), m)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            if self.fuse_conv_pool and i + 1 < len(modules) and hasattr(modules[i], "forward_max_pool2d") \
                    and getattr(modules[i + 1], "fuses_into_conv", False):
                x = modules[i].forward_max_pool2d(x)
                i += 2
            else:
                x = modules[i](x)
                i += 1
        return x
