"""Between torch and tritonnet models: build a tritonnet model from an equivalent torch
``nn.Sequential`` (weights copied), or a torch twin of a tritonnet architecture, for comparisons.

Both directions go through one neutral description, a *layer spec*: a list of
``(name, kind, kwargs)`` with ``kind`` a torch.nn class name (``"Conv2d"``, ``"MaxPool2d"``,
``"Linear"``, ``"ReLU"``, ``"Flatten"``, or ``"Sequential"`` whose kwargs hold ``children``) and
``kwargs`` that class's constructor arguments.

Why ReLUs are fused and names keep gaps: tritonnet's conv and linear kernels apply a ReLU in their
epilogue (``activation="relu"``), which saves a launch and a full read and write of the
activation. torch's ``nn.Sequential`` numbers its ReLU modules too (conv ``"0"``, relu ``"1"``,
pool ``"2"``), so renumbering after fusion would shift every later key and break
``model.load_state_dict(torch_model.state_dict())``. Instead the fused model keeps torch's names:
its children are ``"0"``, ``"2"``, ``"3"``, ... with a gap where each fused ReLU was, and its
``state_dict`` keys are exactly torch's. ``fuse=False`` keeps every ReLU as its own layer.
"""
from __future__ import annotations

FUSABLE = ("Conv2d", "Linear")
SUPPORTED = ("Conv2d", "MaxPool2d", "Linear", "ReLU", "Flatten", "Sequential")


def numbered(*entries):
    """A spec from ``(kind, kwargs)`` pairs (or ``(kind,)``), named ``"0"``, ``"1"``, ... like
    torch.nn.Sequential names its children."""
    spec = []
    for i, entry in enumerate(entries):
        kind, kwargs = entry[0], (entry[1] if len(entry) > 1 else {})
        spec.append((str(i), kind, dict(kwargs)))
    return spec


# ----------------------------------------------------------------------------- torch -> spec


def _pair_or_int(value):
    return tuple(value) if isinstance(value, (tuple, list)) else value


def spec_from_torch(module, where: str = "model") -> list:
    """Describe a torch ``nn.Sequential`` of supported layers; anything else is a TypeError/ValueError
    naming the offending child."""
    import torch.nn as nn

    if not isinstance(module, nn.Sequential):
        raise TypeError(f"{where} must be a torch.nn.Sequential, got {type(module).__name__}")
    spec = []
    for name, child in module.named_children():
        path = f"{where}[{name!r}]"
        if isinstance(child, nn.Sequential):
            spec.append((name, "Sequential", {"children": spec_from_torch(child, path)}))
        elif isinstance(child, nn.Conv2d):
            if child.padding_mode != "zeros":
                raise ValueError(f"{path}: Conv2d padding_mode must be 'zeros', got {child.padding_mode!r}")
            padding = child.padding
            if isinstance(padding, str):
                if padding != "valid":
                    raise ValueError(f"{path}: Conv2d padding must be numbers or 'valid', got {padding!r}")
                padding = 0
            spec.append((name, "Conv2d", dict(
                in_channels=child.in_channels, out_channels=child.out_channels,
                kernel_size=_pair_or_int(child.kernel_size), stride=_pair_or_int(child.stride),
                padding=_pair_or_int(padding), dilation=_pair_or_int(child.dilation),
                groups=child.groups, bias=child.bias is not None)))
        elif isinstance(child, nn.MaxPool2d):
            if child.return_indices:
                raise ValueError(f"{path}: MaxPool2d with return_indices=True is not a layer tritonnet builds")
            spec.append((name, "MaxPool2d", dict(
                kernel_size=_pair_or_int(child.kernel_size),
                stride=_pair_or_int(child.stride if child.stride is not None else child.kernel_size),
                padding=_pair_or_int(child.padding), dilation=_pair_or_int(child.dilation),
                ceil_mode=bool(child.ceil_mode))))
        elif isinstance(child, nn.Linear):
            spec.append((name, "Linear", dict(in_features=child.in_features, out_features=child.out_features,
                                              bias=child.bias is not None)))
        elif isinstance(child, nn.ReLU):
            spec.append((name, "ReLU", {}))
        elif isinstance(child, nn.Flatten):
            if child.end_dim != -1:
                raise ValueError(f"{path}: Flatten end_dim must be -1, got {child.end_dim}")
            spec.append((name, "Flatten", {"start_dim": child.start_dim}))
        else:
            raise TypeError(f"{path}: {type(child).__name__} has no tritonnet equivalent "
                            f"(supported: {', '.join(SUPPORTED)})")
    return spec


# ----------------------------------------------------------------------------- spec -> models


def build(spec, fuse: bool = True):
    """A tritonnet ``Sequential`` from a spec, children named as in the spec.

    With ``fuse`` a ReLU directly after a Conv2d or Linear becomes that layer's
    ``activation="relu"`` and its name is left out (see the module docstring for why).
    """
    from . import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

    pending = []  # [name, kind, kwargs]; a fused ReLU edits the kwargs of the entry before it
    for name, kind, kwargs in spec:
        if kind == "ReLU" and fuse and pending and pending[-1][1] in FUSABLE \
                and pending[-1][2].get("activation") is None:
            pending[-1][2]["activation"] = "relu"
            continue
        pending.append([name, kind, dict(kwargs)])
    constructors = {"Conv2d": Conv2d, "MaxPool2d": MaxPool2d, "Linear": Linear, "ReLU": ReLU, "Flatten": Flatten}
    model = Sequential()
    for name, kind, kwargs in pending:
        if kind == "Sequential":
            child = build(kwargs["children"], fuse)
        elif kind in constructors:
            child = constructors[kind](**kwargs)
        else:
            raise TypeError(f"layer {name!r}: unknown kind {kind!r} (supported: {', '.join(SUPPORTED)})")
        setattr(model, name, child)
    return model


def build_torch(spec):
    """The torch ``nn.Sequential`` a spec describes (ReLUs as their own modules), for references."""
    from collections import OrderedDict

    import torch.nn as nn

    children = OrderedDict()
    for name, kind, kwargs in spec:
        if kind == "Sequential":
            children[name] = build_torch(kwargs["children"])
        elif kind in SUPPORTED:
            children[name] = getattr(nn, kind)(**kwargs)
        else:
            raise TypeError(f"layer {name!r}: unknown kind {kind!r} (supported: {', '.join(SUPPORTED)})")
    return nn.Sequential(children)


def from_torch(torch_model, fuse: bool = True):
    """A tritonnet model equivalent to ``torch_model`` (an ``nn.Sequential`` of Conv2d, MaxPool2d,
    Linear, ReLU, Flatten, possibly nested), with its weights copied.

    The result's ``state_dict`` keys equal torch's, so ``model.load_state_dict(torch_model.state_dict())``
    keeps working afterwards, e.g. to re-sync weights.
    """
    model = build(spec_from_torch(torch_model), fuse=fuse)
    model.load_state_dict(torch_model.state_dict())
    return model
