"""Training steps to profile and benchmark: one model, one batch size, one precision, built three
ways on the same initial weights and the same data (tritonnet, torch eager, torch.compile), and
for tritonnet optionally captured once as a CUDA graph and replayed.

A step is forward, cross-entropy, backward and an SGD (momentum 0.9) update. Each step object is a
zero-argument callable that takes the next of a few pre-made batches (rotated, so no cache holds
one batch for everyone) and returns the loss.

CUDA graphs (``graphs.py``): the tritonnet step is captured once, forward, backward and
optimizer together, and replayed after copying the next batch into its static input buffers
(``static_x``, ``static_y``); a capture that fails is recorded in ``graph_error`` and the step
stays eager. Under the interpreter there are no graphs (``graph_error`` says so).
"""
from __future__ import annotations

import contextlib
import time

import torch

from . import graphs, models, runtime

MODELS = {
    # name: (models.py name, input shape without batch, default batch on a GPU)
    "lenet": ("lenet5", (1, 28, 28), 256),
    "vgg": ("cifar_cnn", (3, 32, 32), 512),
    "digits": ("digits_cnn", (1, 8, 8), 64),
}
ALIASES = {"lenet5": "lenet", "cifar_cnn": "vgg", "cifar": "vgg", "digits_cnn": "digits"}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9


def resolve(model: str) -> str:
    name = ALIASES.get(model, model)
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {model!r}")
    return name


def default_batch(model: str, quick: bool = False) -> int:
    return 4 if quick else MODELS[resolve(model)][2]


@contextlib.contextmanager
def precision(dtype_name: str):
    """tritonnet's and torch's float32 matmul/conv settings for ``fp32`` (IEEE) or ``tf32``.

    torch lets cuDNN use TF32 for float32 convolutions by default; for a fair "fp32" row both
    sides are held to IEEE fp32, and for "tf32" both may use TF32.
    """
    tf32 = dtype_name == "tf32"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with runtime.float32_matmul_precision("high" if tf32 else "highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def make_batches(model: str, batch: int, dtype_name: str, count: int = 4, seed: int = 0):
    """``count`` random (input, label) batches for ``model`` on tritonnet's device."""
    shape = MODELS[resolve(model)][1]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn((batch, *shape), generator=gen).to(runtime.device(), DTYPES[dtype_name])
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(runtime.device())
        out.append((x, y))
    return out


def torch_model(model: str, dtype_name: str, seed: int = 0):
    """The torch twin of ``model``, initialised from ``seed``, on the device in the step's dtype."""
    torch.manual_seed(seed)
    net = models.create_torch(MODELS[resolve(model)][0])
    return net.to(device=runtime.device(), dtype=DTYPES[dtype_name])


def tritonnet_model(model: str, dtype_name: str, seed: int = 0):
    """The tritonnet model with exactly the torch twin's initial weights (same ``seed``)."""
    from .layers.convert import build, spec_from_torch

    reference = torch_model(model, dtype_name, seed)
    net = build(spec_from_torch(reference)).to(DTYPES[dtype_name])  # built on tritonnet's device
    net.load_state_dict(reference.state_dict())
    return net


def channels_last_by_default(model: str) -> bool:
    """Whether tritonnet runs ``model`` channels-last (``models.channels_last_for`` its images)."""
    return models.channels_last_for(MODELS[resolve(model)][1][0])


class TritonnetStep:
    """One tritonnet training step; ``cuda_graph=True`` captures it once and replays it;
    ``channels_last``: the batch is copied to channels-last first (inside the step, and so inside
    the graph), which the network's layers then keep."""

    impl = "tritonnet"

    def __init__(self, net, optimizer, batches, dtype_name: str, cuda_graph: bool = False,
                 channels_last: bool = False):
        self.net, self.optimizer, self.batches, self.dtype_name = net, optimizer, batches, dtype_name
        self.channels_last = channels_last
        self.calls = 0
        self.graph = None
        self.graph_error = None
        self.static_x = self.static_y = self.static_loss = None
        if cuda_graph:
            self._capture()
        elif not runtime.INTERPRETED:
            self.graph_error = "disabled"
        else:
            self.graph_error = "Triton interpreter (no CUDA)"

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def eager_step(self, x, y):
        from .train import train_step

        return train_step(self.net, self.optimizer, x, y, self.channels_last)[0]

    def _capture(self):
        if runtime.INTERPRETED:
            self.graph_error = "Triton interpreter (no CUDA)"
            return
        x0, y0 = self.batches[0]
        self.static_x, self.static_y = x0.clone(), y0.clone()
        params = self.net.parameters()
        # Warm-up on a side stream, as torch's recipe for whole-network capture does.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with precision(self.dtype_name), torch.cuda.stream(side):
            before = graphs.addresses(params)
            for _ in range(3):  # compiles, autotunes and creates optimizer state outside the capture
                self.eager_step(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        try:
            graphs.check_in_place(params, before)
            self.graph, self.static_loss = graphs.capture(self.eager_step, self.static_x, self.static_y,
                                                          context=lambda: precision(self.dtype_name))
        except graphs.CaptureError as exc:
            self.graph_error = str(exc)

    def __call__(self):
        x, y = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        if self.graph is not None:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            return self.static_loss
        with precision(self.dtype_name):
            return self.eager_step(x, y)


class TorchStep:
    """The same step in torch: eager (cuDNN, ``cudnn.benchmark`` on) or through ``torch.compile``
    (forward and backward compiled by AOTAutograd, the optimizer left eager)."""

    graph = None
    graph_error = "not applicable"
    graphed = False

    def __init__(self, net, batches, dtype_name: str, compiled: bool = False, channels_last: bool = False):
        self.impl = "torch.compile" if compiled else "torch"
        self.net, self.batches, self.dtype_name = net, batches, dtype_name
        self.channels_last = channels_last
        if channels_last:  # torch's recipe: weights and input channels-last
            net.to(memory_format=torch.channels_last)
        if compiled:
            from .bench import compiled as compile_fn

            self.forward = compile_fn(net)
        else:
            self.forward = net
        self.optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        self.calls = 0

    def __call__(self):
        x, y = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        with precision(self.dtype_name):
            self.optimizer.zero_grad(set_to_none=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(self.forward(x), y)
            loss.backward()
            self.optimizer.step()
        return loss


def build_step(model: str, batch: int, dtype_name: str = "fp32", impl: str = "tritonnet",
               cuda_graph: bool | None = None, n_batches: int = 4, seed: int = 0, channels_last: bool | None = None):
    """A training step of ``model`` at ``batch`` in ``dtype_name`` (fp32, tf32, bf16, fp16).

    ``impl``: ``"tritonnet"``, ``"torch"`` or ``"torch.compile"``. ``cuda_graph`` (tritonnet only):
    None means on when a GPU is present. ``channels_last``: the batch (which is NCHW, the same for
    everyone) is copied to channels-last inside the step; None means tritonnet's default
    (``channels_last_by_default``) and torch's (False: NCHW, the memory format torch users get
    unless they ask). Same ``seed`` -> same initial weights and batches for all.
    """
    model = resolve(model)
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype_name!r}")
    batches = make_batches(model, batch, dtype_name, n_batches, seed)
    if impl == "tritonnet":
        from . import optim

        net = tritonnet_model(model, dtype_name, seed)
        opt = optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        if cuda_graph is None:
            cuda_graph = not runtime.INTERPRETED
        if channels_last is None:
            channels_last = channels_last_by_default(model)
        return TritonnetStep(net, opt, batches, dtype_name, cuda_graph=cuda_graph, channels_last=channels_last)
    if impl in ("torch", "torch.compile"):
        return TorchStep(torch_model(model, dtype_name, seed), batches, dtype_name, compiled=impl == "torch.compile",
                         channels_last=bool(channels_last))
    raise ValueError(f"impl must be 'tritonnet', 'torch' or 'torch.compile', got {impl!r}")


def synchronize() -> None:
    if not runtime.INTERPRETED:
        torch.cuda.synchronize()


def wall_ms_per_call(fn, reps: int = 20, warmup: int = 2) -> float:
    """What a user sees: milliseconds per call of ``fn`` over ``reps`` back-to-back calls, Python
    and launch overhead included, the device drained at the end."""
    for _ in range(warmup):
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize()
    return (time.perf_counter() - start) * 1e3 / reps
