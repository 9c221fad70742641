"""CUDA graphs for training steps: record a step's launches once, then replay them for each batch.

The networks here are small, so a step is a few dozen short kernels and the GPU waits on Python
and the launch path between them; a replay launches them all in one call. What a capture needs,
and how its users (``tritonnet train``'s loop, the bench's steps) meet it:

- static inputs: the captured step reads its batch from buffers allocated once; each replay is
  preceded by copying the next batch into them;
- tensors the step allocates while captured come from the graph's private pool and are rewritten
  in place by every replay: outputs (loss, gradients) are read from the tensors the capture
  returned (``p.grad`` keeps pointing at them);
- kernels compiled and autotuned before the capture (a few eager steps first), and parameters and
  optimizer state updated in place (``check_in_place``): a storage that moved would leave every
  replay reading the captured one;
- nothing in the step may synchronise with the host.

Under the Triton interpreter there is no CUDA: ``capture`` raises ``CaptureError`` saying so, and
callers run the step eagerly, as they do after any failed capture.
"""
from __future__ import annotations

import contextlib

import torch

from . import runtime


class CaptureError(RuntimeError):
    """Why a step could not be captured (its message is what the callers report)."""


def addresses(params) -> list:
    """The storage address of each parameter (tn.Tensors or torch tensors)."""
    return [getattr(p, "data", p).data_ptr() for p in params]


def check_in_place(params, before) -> None:
    """Raise ``CaptureError`` if a parameter's storage is no longer at ``before`` (from
    ``addresses``, taken before the eager steps): replays would keep reading the old storage."""
    if any(now != then for now, then in zip(addresses(params), before)):
        raise CaptureError("the optimizer replaces parameter storage instead of updating it in place")


def capture(step, *static_args, context=contextlib.nullcontext):
    """Capture ``step(*static_args)`` as a CUDA graph; return ``(graph, outputs)``.

    Nothing runs: ``graph.replay()`` does what the call did, reading ``static_args`` as they are
    then and rewriting ``outputs`` in place. ``context`` (a factory) is entered around the capture
    (precision settings). Raises ``CaptureError`` under the interpreter or when the step cannot be
    captured (for example an op that waits for the device); the device is left usable.
    """
    if runtime.INTERPRETED:
        raise CaptureError("Triton interpreter (no CUDA)")
    graph = torch.cuda.CUDAGraph()
    try:
        with context(), torch.cuda.graph(graph):
            outputs = step(*static_args)
    except Exception as exc:
        try:
            torch.cuda.synchronize()
        except Exception:  # pragma: no cover - the failed capture's error surfaces here too
            pass
        raise CaptureError(f"capture failed: {type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    return graph, outputs


__all__ = ["CaptureError", "addresses", "check_in_place", "capture"]
