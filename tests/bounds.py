"""A bounds checker for the interpreter, which does not catch out-of-bounds accesses itself.

While a kernel launched through ``runtime.launch`` runs, every address a masked load, store or
atomic touches (where its mask is true) must lie inside the storage of one of the launch's tensor
arguments. A violation raises at the faulting op, naming the kernel, instead of silently reading
garbage or corrupting the heap.
"""
from __future__ import annotations

import numpy as np

_ranges = None  # [(lo, hi)] byte ranges of the current launch's tensor arguments
_kernel_name = ""


class OutOfBoundsAccess(AssertionError):
    pass


def _check(op, ptrs, mask):
    if _ranges is None:
        return
    addrs = np.asarray(ptrs.data, dtype=np.uint64)
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask.data, dtype=bool), addrs.shape)
        addrs = addrs[m]
    addrs = addrs.ravel()
    if addrs.size == 0:
        return
    size = np.uint64(max(ptrs.get_element_ty().primitive_bitwidth // 8, 1))
    inside = np.zeros(addrs.shape, dtype=bool)
    for lo, hi in _ranges:
        inside |= (addrs >= np.uint64(lo)) & (addrs + size <= np.uint64(hi))
    if not inside.all():
        bad = addrs[~inside][:4]
        raise OutOfBoundsAccess(f"{_kernel_name}: {op} outside every tensor argument at addresses "
                                f"{[hex(int(a)) for a in bad]} (ranges {[(hex(a), hex(b)) for a, b in _ranges]})")


def install():
    """Wrap the interpreter's memory ops (triton 3.6 and 3.9 signatures) with the check."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas

    # (keyword arguments too: tensor-descriptor loads pass cache_policy and the like by name)
    def create_masked_load(self, ptrs, mask, *rest, **options):
        _check("load", ptrs, mask)
        return load(self, ptrs, mask, *rest, **options)

    def create_masked_store(self, ptrs, value, mask, *rest, **options):
        _check("store", ptrs, mask)
        return store(self, ptrs, value, mask, *rest, **options)

    def create_atomic_rmw(self, op, ptr, val, mask, *rest):
        _check("atomic", ptr, mask)
        return rmw(self, op, ptr, val, mask, *rest)

    def create_atomic_cas(self, ptr, cmp, val, *rest):
        _check("atomic_cas", ptr, None)
        return cas(self, ptr, cmp, val, *rest)

    builder.create_masked_load = create_masked_load
    builder.create_masked_store = create_masked_store
    builder.create_atomic_rmw = create_atomic_rmw
    builder.create_atomic_cas = create_atomic_cas


def observer(kernel, grid, args, constexprs, info, run):
    """A ``runtime.launch`` observer that arms the check with this launch's tensor arguments."""
    import torch

    global _ranges, _kernel_name
    ranges = []
    for a in list(args) + list(constexprs.values()) + list(getattr(info, "tensors", ())):
        if isinstance(a, torch.Tensor):
            s = a.untyped_storage()
            ranges.append((s.data_ptr(), s.data_ptr() + s.nbytes()))
    previous = _ranges, _kernel_name
    _ranges, _kernel_name = ranges, getattr(kernel, "__name__", None) or str(kernel)
    try:
        return run()
    finally:
        _ranges, _kernel_name = previous
