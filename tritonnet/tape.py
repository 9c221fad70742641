"""The tape: a Tensor that remembers the op that made it, and reverse-mode backward.

An op is a forward launch plus a backward closure over what it saved. ``record`` wires the
output to its inputs; ``Tensor.backward`` walks the graph in reverse topological order, hands
each closure its output's gradient, accumulates what flows into each input, and frees the saved
tensors as it goes. The tape holds device memory only in torch.Tensors; all arithmetic on it
(gradient accumulation included) is done by tritonnet kernels.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch

from . import runtime

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Ops inside record nothing on the tape."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


class Node:
    """One recorded op: the backward closure and where each input's gradient goes.

    ``inputs`` holds one edge per input: the Node that made it, the leaf Tensor itself (whose
    ``.grad`` receives the gradient), or None where no gradient is needed. Edges never hold an
    intermediate Tensor, so an activation is kept alive only if some op saved it for backward.
    """

    __slots__ = ("name", "inputs", "backward_fn", "saved", "__weakref__")

    def __init__(self, name, inputs, backward_fn, saved):
        self.name, self.inputs, self.backward_fn, self.saved = name, inputs, backward_fn, saved


# Storage address -> [number of live nodes holding it, bytes]. Counting storages rather than
# tensors means an activation saved by two ops (one's output, the next one's input) counts once,
# as torch autograd's saved tensors do when measured by storage.
_saved_storages: dict = {}


def saved_bytes() -> int:
    """Bytes of the distinct storages live nodes of the tape hold for backward."""
    return sum(nbytes for _, nbytes in _saved_storages.values())


def _hold(saved) -> list:
    keys = []
    for tensor in saved:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        entry = _saved_storages.setdefault(storage.data_ptr(), [0, storage.nbytes()])
        entry[0] += 1
        keys.append(storage.data_ptr())
    return keys


class Tensor:
    """A torch.Tensor (``.data``) with a gradient slot and, if an op made it, a link to that op."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
        if requires_grad and not data.dtype.is_floating_point:
            raise TypeError(f"only floating-point tensors can require gradients, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: self.data.device)
    ndim = property(lambda self: self.data.dim())

    def dim(self) -> int:
        return self.data.dim()

    def size(self, dim=None):
        return self.data.size() if dim is None else self.data.size(dim)

    def numel(self) -> int:
        return self.data.numel()

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = f", grad_fn={self._node.name}" if self._node is not None else ""
        req = ", requires_grad=True" if self.requires_grad and self._node is None else ""
        return f"tn.Tensor({self.data!r}{req}{grad})"

    def detach(self) -> "Tensor":
        """The same storage, cut from the tape."""
        return Tensor(self.data)

    def numpy(self):
        value = self.data.detach().cpu().numpy()
        runtime.raise_deferred(wait=True)  # the read waited for the device: deferred checks are due
        return value

    # Arithmetic a training loop needs, as tritonnet kernels recorded on the tape. functional
    # imports the tape, so it is imported lazily here.

    def item(self):
        """The value of a one-element tensor as a Python number (a device-to-host read)."""
        if self.data.numel() != 1:
            raise ValueError(f"item() needs a one-element tensor, got shape {tuple(self.data.shape)}")
        value = self.data.item()
        runtime.raise_deferred(wait=True)  # the read waited for the device: deferred checks are due
        return value

    def __add__(self, other):
        from . import functional as F

        if not isinstance(other, (Tensor, torch.Tensor, int, float)) or isinstance(other, bool):
            return NotImplemented
        return F.add(self, other)

    def __radd__(self, other):  # 0 + t (Python's sum() starts from 0) and torch.Tensor + t
        return self.__add__(other)

    def __sub__(self, other):
        from . import functional as F

        if not isinstance(other, (Tensor, torch.Tensor, int, float)) or isinstance(other, bool):
            return NotImplemented
        return F.sub(self, other)

    def __rsub__(self, other):
        from . import functional as F

        if not isinstance(other, (Tensor, torch.Tensor, int, float)) or isinstance(other, bool):
            return NotImplemented
        if isinstance(other, (int, float)):
            return F.add(F.neg(self), other)
        return F.sub(other, self)

    def __mul__(self, other):
        from . import functional as F

        if not isinstance(other, (int, float)) or isinstance(other, bool):
            return NotImplemented  # only scalar products: no elementwise tensor product is needed
        return F.mul_scalar(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not isinstance(other, (int, float)) or isinstance(other, bool):
            return NotImplemented
        return self.__mul__(1.0 / other)

    def __neg__(self):
        from . import functional as F

        return F.neg(self)

    def sum(self):
        """The sum of all elements (a 0-d tensor)."""
        from . import functional as F

        return F.sum_all(self)

    def mean(self):
        """The mean of all elements (a 0-d tensor)."""
        from . import functional as F

        return F.mean_all(self)

    def reshape(self, *shape):
        from . import functional as F

        return F.reshape(self, *shape)

    def view(self, *shape):
        """Like reshape, but only for layouts a view can express (torch's rule)."""
        from . import functional as F

        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self.data.view(shape)  # raises torch's error when no view is possible
        return F.reshape(self, shape)

    def flatten(self, start_dim=0, end_dim=-1):
        from . import functional as F

        return F.flatten(self, start_dim, end_dim)

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf that requires grad.

        ``grad`` defaults to 1 for a one-element tensor; any other shape needs it explicitly.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad and has no grad_fn")
        runtime.raise_deferred()  # bad input found meanwhile (without waiting for the device)
        if grad is None:
            if self.data.numel() != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for one-element outputs; got shape "
                    f"{tuple(self.data.shape)}, pass grad= explicitly"
                )
            grad = runtime.empty(self.data.shape, self.data.dtype, self.data.device)
            grad.fill_(1.0)
            setattr(grad, UNIT_SEED, True)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if not isinstance(grad, torch.Tensor) or grad.shape != self.data.shape:
                raise ValueError(
                    f"grad must be a tensor of shape {tuple(self.data.shape)}, got "
                    f"{tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__}"
                )
        _backward(self, grad)


# The attribute that marks backward()'s implicit seed, a gradient of exactly 1: an op whose
# backward would only multiply by it (cross_entropy's) may skip that launch. An op that hands the
# same tensor on unchanged keeps the mark; anything computed from it is a new, unmarked tensor.
UNIT_SEED = "_tritonnet_unit_seed"


def _accumulate(existing, grad):
    if existing is None:
        return grad
    from .kernels.elementwise import add

    return add(existing, grad)


def _topological_order(root: Node) -> list:
    """Nodes and leaf tensors reachable from ``root``, each after every vertex that feeds it grads."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:  # iterative DFS: deep nets must not hit Python's recursion limit
        vertex, expanded = stack.pop()
        if expanded:
            order.append(vertex)
            continue
        if id(vertex) in seen:
            continue
        seen.add(id(vertex))
        stack.append((vertex, True))
        if isinstance(vertex, Node):
            stack.extend((edge, False) for edge in vertex.inputs if edge is not None and id(edge) not in seen)
    return order[::-1]


def _backward(root: Tensor, grad: torch.Tensor) -> None:
    if root._node is None:  # a leaf: its gradient is the seed itself
        root.grad = _accumulate(root.grad, grad)
        return
    grads = {id(root._node): grad}
    for vertex in _topological_order(root._node):
        g = grads.pop(id(vertex), None)
        if g is None:
            continue
        if isinstance(vertex, Tensor):
            vertex.grad = _accumulate(vertex.grad, g)
            continue
        if vertex.backward_fn is None:
            raise RuntimeError(
                f"trying to backward through the graph a second time: the tensors {vertex.name} saved "
                "were freed after the first backward"
            )
        input_grads = vertex.backward_fn(g)
        vertex.backward_fn = None  # frees what the closure saved
        _release(vertex.saved)
        for edge, input_grad in zip(vertex.inputs, input_grads):
            if edge is not None and input_grad is not None:
                grads[id(edge)] = _accumulate(grads.get(id(edge)), input_grad)


def _release(keys: list) -> None:
    """Stop counting a node's saved storages (after its backward, or when the graph is dropped)."""
    for key in keys:
        entry = _saved_storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            del _saved_storages[key]
    keys.clear()


def as_tensor(x, name: str = "input") -> Tensor:
    """Accept a tn.Tensor or a plain torch.Tensor (a constant) as an op's argument."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, torch.Tensor):
        return Tensor(x)
    raise TypeError(f"{name} must be a tn.Tensor or torch.Tensor, got {type(x).__name__}")


def record(name: str, output: torch.Tensor, inputs, backward_fn, saved=()) -> Tensor:
    """Wrap ``output`` as a Tensor; if any input needs a gradient, remember how to get it.

    ``backward_fn(grad_output) -> tuple`` returns one gradient (or None) per input. ``saved``
    lists the torch.Tensors the closure keeps alive, so the tape can report saved-for-backward bytes.
    """
    out = Tensor(output)
    if is_grad_enabled() and any(i is not None and i.requires_grad for i in inputs):
        edges = tuple(None if i is None or not i.requires_grad else (i._node or i) for i in inputs)
        saved_keys = _hold(saved)
        out.requires_grad = True
        out._node = Node(name, edges, backward_fn, saved_keys)
        weakref.finalize(out._node, _release, saved_keys)
    return out
