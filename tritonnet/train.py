"""``tritonnet train``: train a small CNN made only of tritonnet kernels, on a GPU or the interpreter.

One training step is: forward through the model (every op a Triton kernel, recorded on the tape),
fused softmax cross-entropy, ``loss.backward()`` (each example's gradient routed through its own
max-pool winners before the parameter gradients are reduced over the batch), and one fused
optimizer update. Batch order depends only on ``(seed, epoch)`` and no kernel on this path uses
atomics, so two runs with the same seed end with bitwise-identical weights.

Checkpoints are safetensors (no pickle): ``PATH`` holds the weights (keys equal torch's, so the
file loads into the torch twin of the model too), ``PATH``'s ``.json`` sidecar the configuration
and progress, and ``.optim.safetensors`` the optimizer state that ``--resume`` restores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from . import data, graphs, models, runtime
from .tape import Tensor, no_grad

# Defaults chosen so `tritonnet train` reaches >= 95% test accuracy on digits in under three minutes
# on a 2-core CPU through the interpreter. There a step's cost grows with the images in it, so the
# lever is the number of epochs: Adam at 5e-3 gets there in 4 (the same net in torch, 12 seeds:
# 95.8% at worst, 97.1% on average).
DEFAULT_EPOCHS = 4
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = {"adam": 5e-3, "adamw": 5e-3, "sgd": 0.05}
# The larger nets train more stably with torch's usual Adam rate.
DEFAULT_LR_FOR_MODEL = {"lenet5": {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05},
                        "cifar_cnn": {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.02}}
DEFAULT_CHECKPOINT = os.path.join("checkpoints", "{model}.safetensors")
EVAL_BATCH_SIZE = 1000


@dataclass
class TrainConfig:
    dataset: str = "digits"
    model: str | None = None          # None: the data set's default network
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float | None = None           # None: the optimizer's default above
    optimizer: str = "adam"
    momentum: float = 0.9             # SGD only
    weight_decay: float | None = None  # None: 0 for SGD/Adam, 1e-2 for AdamW (torch's defaults)
    seed: int = 0
    train_limit: int | None = None    # use only the first N training / test examples (smoke runs)
    test_limit: int | None = None
    channels_last: bool | None = None  # None: models.channels_last_for the model's input channels
    cuda_graph: bool | None = None    # None: on when kernels run on a GPU (TrainStep)
    tf32: bool = False                # float32 convolutions and matmuls on TF32 tensor cores
    label_smoothing: float = 0.0      # the training loss's (torch's CrossEntropyLoss option)
    history: list = field(default_factory=list)

    def resolved(self) -> "TrainConfig":
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"optimizer must be one of {', '.join(DEFAULT_LR)}, got {self.optimizer!r}")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs} and {self.batch_size}")
        data.parse_spec(self.dataset)
        if self.model is None:
            self.model = models.for_dataset(self.dataset)
        if self.lr is None:
            self.lr = DEFAULT_LR_FOR_MODEL.get(self.model, DEFAULT_LR)[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = 1e-2 if self.optimizer == "adamw" else 0.0
        if self.channels_last is None:
            self.channels_last = models.channels_last_for(models.INPUT_SHAPES[self.model][0])
        if self.cuda_graph is None:
            self.cuda_graph = not runtime.INTERPRETED
        return self


def make_optimizer(config: TrainConfig, params):
    from . import optim

    if config.optimizer == "sgd":
        return optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def load_data(config: TrainConfig) -> data.Dataset:
    ds = data.load(config.dataset)
    if config.train_limit:
        ds.train_images, ds.train_labels = ds.train_images[:config.train_limit], ds.train_labels[:config.train_limit]
    if config.test_limit:
        ds.test_images, ds.test_labels = ds.test_images[:config.test_limit], ds.test_labels[:config.test_limit]
    return ds


def network_input(images: torch.Tensor, channels_last: bool) -> Tensor:
    """A batch as the network reads it: copied to channels-last by tritonnet's kernel when the
    network runs so (its layers then keep the layout). The bench's steps use it too."""
    if channels_last:
        from .kernels.layout import channels_last_copy

        images = channels_last_copy(images)
    return Tensor(images)


def forward_backward(model, optimizer, images: torch.Tensor, labels: torch.Tensor, channels_last: bool = False,
                     label_smoothing: float = 0.0):
    """Forward, cross-entropy and backward of one batch (the gradients start from zero); returns
    the loss and the logits (tn.Tensors). Every training step here is this, then the update."""
    from . import functional as F

    logits = model(network_input(images, channels_last))
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    return loss, logits


def train_step(model, optimizer, images: torch.Tensor, labels: torch.Tensor, channels_last: bool = False,
               label_smoothing: float = 0.0):
    """One step; returns the loss and the logits (tn.Tensors) of this batch."""
    loss, logits = forward_backward(model, optimizer, images, labels, channels_last, label_smoothing)
    optimizer.step()
    return loss, logits


def correct_count(logits, labels: torch.Tensor) -> torch.Tensor:
    """How many rows of ``logits`` put their maximum on the label, as a device scalar (read it when
    a report needs it: reading it waits for the step). Reporting only, off the training path:
    torch's argmax over the logits tritonnet produced."""
    return (logits.data.argmax(dim=1) == labels).sum()


# Eager steps before the capture: every kernel compiled and autotuned, the optimizer state created.
WARMUP_STEPS = 2


class TrainStep:
    """``tritonnet train``'s step: forward, cross-entropy, backward and the optimizer's update of a
    batch, with the batch's loss sum and number of correct predictions added to ``totals`` (float64,
    on the device) rather than read back, so the host queues steps without waiting for each.

    ``cuda_graph``: after WARMUP_STEPS eager steps, the forward and backward of a full batch
    (``batch_size`` examples) are captured once (``graphs.capture``) and then replayed for every
    full batch; a smaller last batch runs eagerly. The optimizer's update stays outside the graph:
    its learning rate and Adam's bias corrections are host values read at each step, which a
    capture would freeze, and it is one launch whose address table it finds cached (the gradients
    live at the graph's fixed addresses). A replay runs the eager step's kernels on the same values,
    so training is bitwise the same either way. A capture that fails (or the interpreter, which
    has no CUDA) leaves the reason in ``graph_error`` and every step eager.
    """

    def __init__(self, model, optimizer, batch_size: int, channels_last: bool = False, cuda_graph: bool = False,
                 label_smoothing: float = 0.0):
        self.model, self.optimizer, self.batch_size, self.channels_last = model, optimizer, batch_size, channels_last
        self.label_smoothing = label_smoothing
        self.params = list(model.parameters())  # what the graph reads and writes gradients for
        self.totals = torch.zeros(2, dtype=torch.float64, device=runtime.device())  # loss sum, correct
        self.graph = None
        self.graph_error = None if cuda_graph else "disabled"
        self.eager_steps = self.graphed_steps = 0
        self._addresses = graphs.addresses(self.params)

    def _forward_backward(self, images, labels):
        loss, logits = forward_backward(self.model, self.optimizer, images, labels, self.channels_last,
                                        self.label_smoothing)
        self.totals += torch.stack((loss.data.double() * len(labels), correct_count(logits, labels).double()))
        return loss.data

    def _capture(self, images, labels):
        self.static_images, self.static_labels = images.clone(), labels.clone()
        try:
            graphs.check_in_place(self.params, self._addresses)
            self.graph, self.static_loss = graphs.capture(self._forward_backward, self.static_images,
                                                          self.static_labels)
        except graphs.CaptureError as exc:
            self.graph_error = str(exc)
            return
        # p.grad now names the graph's gradient tensors; eager steps rebind it, replays restore it.
        self.static_grads = [p.grad for p in self.params]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Train on one batch; returns its mean loss as a device scalar (overwritten by the next
        graphed step: read it before then)."""
        if self.graph is not None and len(labels) == self.batch_size:
            self.static_images.copy_(images)
            self.static_labels.copy_(labels)
            self.graph.replay()
            for p, grad in zip(self.params, self.static_grads):
                p.grad = grad
            self.optimizer.step()
            self.graphed_steps += 1
            return self.static_loss
        loss = self._forward_backward(images, labels)
        self.optimizer.step()
        self.eager_steps += 1
        if (self.graph is None and self.graph_error is None and self.eager_steps >= WARMUP_STEPS
                and len(labels) == self.batch_size):
            self._capture(images, labels)
        return loss


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
             channels_last: bool = False):
    """(accuracy, mean loss) of ``model`` on a data set, without recording anything on the tape."""
    from . import functional as F

    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=runtime.device())  # loss sum, correct
    try:
        with no_grad():
            for x, y in data.batches(images, labels, batch_size, shuffle=False, device=runtime.device()):
                logits = model(network_input(x, channels_last))
                batch_loss = F.cross_entropy(logits, y, reduction="sum").data
                totals += torch.stack((batch_loss.double(), correct_count(logits, y).double()))
    finally:
        model.train(was_training)
    loss_sum, correct = totals.tolist()
    n = max(len(labels), 1)
    return correct / n, loss_sum / n


# ----------------------------------------------------------------------------- checkpoints


def _paths(path: str):
    stem = path[:-len(".safetensors")] if path.endswith(".safetensors") else path
    return path, stem + ".json", stem + ".optim.safetensors"


def _split_tensors(obj, tensors, prefix):
    """Replace every tensor in a nested dict/list structure by a reference, collecting tensors."""
    if isinstance(obj, Tensor):
        obj = obj.data
    if isinstance(obj, torch.Tensor):
        key = prefix or "value"
        tensors[key] = obj.detach().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split_tensors(v, tensors, f"{prefix}.{k}" if prefix else str(k))]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_split_tensors(v, tensors, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def _join_tensors(obj, tensors):
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]].to(runtime.device())
        if "__dict__" in obj:
            return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
    return obj


def save_checkpoint(path: str, model, optimizer, config: TrainConfig, epoch: int, test_accuracy=None) -> None:
    """Weights to ``path`` (safetensors), config + progress to the JSON sidecar, optimizer state
    (if the optimizer exposes ``state_dict``) to ``.optim.safetensors``. Written to temporary names
    first, so an interrupted save never leaves a half-written checkpoint under the real name."""
    from safetensors.torch import save_file

    weights_path, sidecar_path, optim_path = _paths(path)
    os.makedirs(os.path.dirname(os.path.abspath(weights_path)), exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, weights_path + ".tmp", metadata={"format": "tritonnet", "model": str(config.model)})
    sidecar = {"format": "tritonnet-checkpoint-1", "config": asdict(config), "epoch": epoch,
               "test_accuracy": test_accuracy, "weights": os.path.basename(weights_path),
               "optimizer_state": None, "device": runtime.describe()}
    if hasattr(optimizer, "state_dict"):
        tensors = {}
        structure = _split_tensors(optimizer.state_dict(), tensors, "")
        save_file({k: v.cpu() for k, v in tensors.items()}, optim_path + ".tmp")
        sidecar["optimizer_state"] = {"file": os.path.basename(optim_path), "structure": structure}
    with open(sidecar_path + ".tmp", "w") as f:
        json.dump(sidecar, f, indent=2)
    os.replace(weights_path + ".tmp", weights_path)
    if sidecar["optimizer_state"] is not None:
        os.replace(optim_path + ".tmp", optim_path)
    os.replace(sidecar_path + ".tmp", sidecar_path)


def read_sidecar(path: str) -> dict:
    weights_path, sidecar_path, _ = _paths(path)
    for p in (weights_path, sidecar_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"checkpoint file {p} does not exist")
    try:
        with open(sidecar_path) as f:
            sidecar = json.load(f)
        sidecar["config"]["model"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint sidecar {sidecar_path} is malformed: {exc}") from None
    return sidecar


def load_checkpoint(path: str, optimizer_factory=None):
    """Rebuild ``(model, config, sidecar, optimizer)`` from a checkpoint; the optimizer (built by
    ``optimizer_factory(config, params)``) gets its saved state back when there is one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sidecar = read_sidecar(path)
    known = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in sidecar["config"].items() if k in known})
    model = models.create(config.model)
    weights_path, sidecar_path, optim_path = _paths(path)
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"checkpoint file {weights_path} is not a readable safetensors file: {exc}") from None
    model.load_state_dict(weights)
    optimizer = None
    if optimizer_factory is not None:
        optimizer = optimizer_factory(config, model.parameters())
        state = sidecar.get("optimizer_state")
        if state is not None and hasattr(optimizer, "load_state_dict"):
            tensors = load_file(optim_path)
            optimizer.load_state_dict(_join_tensors(state["structure"], tensors))
        elif sidecar.get("epoch", 0) > 0:
            print(f"warning: {sidecar_path} holds no optimizer state; resuming with a fresh optimizer",
                  file=sys.stderr)
    return model, config, sidecar, optimizer


# ----------------------------------------------------------------------------- the loop


# The progress bar's loss and accuracy are read from the device at most this often (each read waits
# for the steps queued so far).
REPORT_SECONDS = 0.5


def fit(model, optimizer, dataset: data.Dataset, config: TrainConfig, start_epoch: int = 0,
        progress: bool = True, on_step=None, on_epoch=None):
    """Train from ``start_epoch`` to ``config.epochs``; returns per-epoch records.

    ``on_step(step, loss_value)`` sees every step's loss (tests compare it with torch; reading it
    makes the host wait for each step); ``on_epoch(epoch, record)`` runs after each epoch
    (checkpointing). Steps run through ``TrainStep`` (CUDA-graphed with ``config.cuda_graph``);
    a record's ``graphed_steps`` says how many of its steps were replays. ``config.tf32`` holds
    float32 matmul precision at "high" for the run (evaluation included), as it was afterwards;
    ``config.label_smoothing`` smooths the training loss (the test loss is plain cross-entropy).
    """
    with runtime.float32_matmul_precision("high" if config.tf32 else runtime.get_float32_matmul_precision()):
        return _fit(model, optimizer, dataset, config, start_epoch, progress, on_step, on_epoch)


def _fit(model, optimizer, dataset, config, start_epoch, progress, on_step, on_epoch):
    from tqdm import tqdm

    device = runtime.device()
    train_x, train_y = dataset.train_images.to(device), dataset.train_labels.to(device)
    test_x, test_y = dataset.test_images.to(device), dataset.test_labels.to(device)
    per_epoch = data.num_batches(len(train_y), config.batch_size)
    train_batch = TrainStep(model, optimizer, config.batch_size, bool(config.channels_last), bool(config.cuda_graph),
                            config.label_smoothing)
    records = []
    step = start_epoch * per_epoch
    model.train()
    for epoch in range(start_epoch, config.epochs):
        bar = tqdm(total=per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not progress, leave=True, dynamic_ncols=True, file=sys.stderr)
        seen = 0
        graphed_before = train_batch.graphed_steps
        train_batch.totals.zero_()
        start = last_report = time.perf_counter()
        for x, y in data.batches(train_x, train_y, config.batch_size, seed=config.seed, epoch=epoch):
            loss = train_batch(x, y)
            if on_step is not None:
                on_step(step, float(loss))
            step += 1
            seen += len(y)
            now = time.perf_counter()
            if progress and now - last_report >= REPORT_SECONDS:
                loss_sum, correct = train_batch.totals.tolist()
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                **{"img/s": f"{seen / max(now - start, 1e-9):.0f}"}, refresh=False)
                last_report = now
            bar.update(1)
        loss_sum, correct = train_batch.totals.tolist()  # waits for the epoch's last step
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.3f}",
                        **{"img/s": f"{seen / max(elapsed, 1e-9):.0f}"}, refresh=False)
        bar.close()
        test_accuracy, test_loss = evaluate(model, test_x, test_y, channels_last=bool(config.channels_last))
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "test_loss": test_loss, "test_accuracy": test_accuracy, "seconds": elapsed,
                  "images_per_second": seen / max(elapsed, 1e-9),
                  "graphed_steps": train_batch.graphed_steps - graphed_before}
        records.append(record)
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                  f"train acc {record['train_accuracy']:.3f}, test loss {test_loss:.4f}, "
                  f"test acc {test_accuracy:.4f}, {record['images_per_second']:.0f} img/s", file=sys.stderr)
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    if config.cuda_graph and train_batch.graph is None and train_batch.eager_steps >= WARMUP_STEPS and progress:
        print(f"note: steps ran eagerly, no CUDA graph ({train_batch.graph_error or 'no full batch after warm-up'})",
              file=sys.stderr)
    return records


def saved_for_backward(model_name: str = "lenet5", batch_size: int = 64, seed: int = 0) -> dict:
    """Bytes held for backward after one forward pass (model + loss) of a training step: the tape's
    own count versus what torch autograd saves for the same net, weights and batch, measured with
    ``torch.autograd.graph.saved_tensors_hooks`` and deduplicated by storage."""
    from . import functional as F
    from . import tape

    device = runtime.device()
    torch.manual_seed(seed)
    model = models.create(model_name)
    twin = models.create_torch(model_name).to(device)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(batch_size, *models.INPUT_SHAPES[model_name], device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    before = tape.saved_bytes()
    loss = F.cross_entropy(model(Tensor(x)), y)
    ours = tape.saved_bytes() - before
    del loss  # frees the graph

    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), str(storage.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch_loss = torch.nn.functional.cross_entropy(twin(x), y)
    del torch_loss
    theirs = sum(storages.values())
    return {"model": model_name, "batch_size": batch_size, "tritonnet_saved_bytes": ours,
            "torch_saved_bytes": theirs, "ratio": ours / theirs if theirs else float("nan")}


def process_seconds():
    """Seconds since this process started (interpreter and torch/triton imports included), where
    /proc tells; None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default="digits",
                        help="digits (built in, the default) | mnist:DIR | fashion-mnist:DIR | cifar10:DIR")
    parser.add_argument("--model", default=None, choices=sorted(models.SPECS),
                        help="network (default: digits_cnn for digits, lenet5 for (fashion-)mnist, "
                             "cifar_cnn for cifar10)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"default {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default for digits_cnn: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items())
                        + "; Adam/AdamW 1e-3 for lenet5 and cifar_cnn)")
    parser.add_argument("--optimizer", default="adam", choices=sorted(DEFAULT_LR))
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="default 0 (sgd, adam) or 0.01 (adamw), as in torch.optim")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default 0)")
    parser.add_argument("--checkpoint", default=None,
                        help="where to save weights (safetensors) after each epoch, with a .json sidecar "
                             "(default checkpoints/<model>.safetensors)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --checkpoint with its saved configuration, up to --epochs")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="run the network on channels-last batches (default: for images of several "
                             "channels, cifar10: its convolutions and pools then need no staging copies)")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="replay each full batch's forward and backward from a CUDA graph captured "
                             "once (default: on a GPU; the same arithmetic as eager steps)")
    parser.add_argument("--tf32", action="store_true",
                        help="float32 convolutions and matmuls on TF32 tensor cores (a GPU's; faster, ~1e-3 "
                             "relative error, as torch.backends' allow_tf32)")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="label smoothing of the training loss, as torch's CrossEntropyLoss (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")


def main(args) -> int:
    started = time.perf_counter()
    print(runtime.describe(), file=sys.stderr)
    if args.resume:
        if args.checkpoint is None:
            raise SystemExit("tritonnet train: --resume needs --checkpoint PATH")
        model, config, sidecar, optimizer = load_checkpoint(args.checkpoint, make_optimizer)
        start_epoch = int(sidecar.get("epoch", 0))
        config.epochs = args.epochs
        # How steps are launched is this run's choice (it does not change what they compute).
        config.cuda_graph = args.cuda_graph if args.cuda_graph is not None else not runtime.INTERPRETED
        print(f"resuming {args.checkpoint} at epoch {start_epoch} of {config.epochs}", file=sys.stderr)
    else:
        config = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                             momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
                             train_limit=args.train_limit, test_limit=args.test_limit,
                             channels_last=args.channels_last, cuda_graph=args.cuda_graph, tf32=args.tf32,
                             label_smoothing=args.label_smoothing).resolved()
        torch.manual_seed(config.seed)
        model = models.create(config.model)
        optimizer = make_optimizer(config, model.parameters())
        start_epoch = 0
    dataset = load_data(config)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT.format(model=config.model)
    print(f"training {config.model} on {dataset} with {config.optimizer} (lr {config.lr}), batch "
          f"{config.batch_size}, {config.epochs} epochs, seed {config.seed}"
          f"{', channels-last' if config.channels_last else ''}{', CUDA graph' if config.cuda_graph else ''}"
          f"{', TF32' if config.tf32 else ''}"
          f"{f', label smoothing {config.label_smoothing}' if config.label_smoothing else ''}",
          file=sys.stderr)

    def on_epoch(epoch, record):
        config.history.append(record)
        save_checkpoint(checkpoint, model, optimizer, config, epoch, record["test_accuracy"])

    train_started = time.perf_counter()
    records = fit(model, optimizer, dataset, config, start_epoch=start_epoch, progress=not args.no_progress,
                  on_epoch=on_epoch)
    finished = time.perf_counter()
    if records:  # fit evaluated the final weights already
        accuracy, loss = records[-1]["test_accuracy"], records[-1]["test_loss"]
    else:
        device = runtime.device()
        accuracy, loss = evaluate(model, dataset.test_images.to(device), dataset.test_labels.to(device),
                                  channels_last=bool(config.channels_last))
        save_checkpoint(checkpoint, model, optimizer, config, start_epoch, accuracy)
    n_test = len(dataset.test_labels)
    print(f"test accuracy: {accuracy * 100:.2f}% ({round(accuracy * n_test)}/{n_test}), test loss {loss:.4f}")
    total = process_seconds()
    total = total if total is not None else time.perf_counter() - started
    print(f"time: {finished - train_started:.1f} s training, {total:.1f} s in total since the process started "
          f"(mode {runtime.mode()}); checkpoint {checkpoint}")
    return 0
