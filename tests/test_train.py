"""Whole networks against torch: the converter, every parameter gradient of a LeNet-style net on a
batch of 100, batched gradient == mean of per-example gradients (each example back-propagated
through its own max-pool winners, then averaged), per-step losses of a short training run, bitwise
reproducibility, and the tape's saved-for-backward memory against torch autograd's."""
import argparse
import copy

import pytest
import torch

import tritonnet as tn
import tritonnet.functional as F
from tritonnet import data, layers, models, optim, train
from tritonnet.layers import convert


def relative_error(actual, expected) -> float:
    expected = expected.double()
    return float((actual.double().cpu() - expected.cpu()).abs().max() / expected.abs().max().clamp_min(1e-30))


def torch_lenet_style(in_channels=1):
    """LeNet's shape at 16x16: conv5-relu-pool, conv5-relu-pool, three linear layers."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),   # 16 -> 8
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),                       # 8 -> 4 -> 2
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))


def on_a_binary_grid(reference, images_shape, device):
    """Images (multiples of 1/8 in [-1, 1]) for ``reference``, whose conv weights and biases are
    rounded to multiples of 1/128: every conv output is then a short binary fraction that float32
    holds exactly, whatever the order of the sums, so our float32 forward and torch's float64
    reference pick the same max-pool winners. With real-valued random data about one draw in a
    hundred has two window values closer than float32 rounding, and the gradient then goes to a
    different pixel (seen on an H100: one element of conv1's weight gradient 1.6e-3 off while its
    bias gradient, which does not see which pixel won, was exact)."""
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.Conv2d):
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(torch.round(p * 128) / 128)
    return torch.randint(-8, 9, images_shape, device=device).float() / 8


def grads_of(model, images, labels, reduction="mean"):
    model.zero_grad()
    loss = F.cross_entropy(model(tn.Tensor(images)), labels, reduction=reduction)
    loss.backward()
    return float(loss.data), {name: p.grad.clone() for name, p in model.named_parameters()}


# ----------------------------------------------------------------------------- the converter


def test_converter_keeps_torch_names_and_fuses_relus(seed, device):
    nn = torch.nn
    reference = torch_lenet_style()
    model = layers.from_torch(reference)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert [name for name, _ in model._modules.items()] == ["0", "2", "3", "5", "6", "7", "9", "11"]
    assert [m.activation for m in (model[0], model[2], model[5], model[6])] == ["relu"] * 4
    assert model[7].activation is None
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name].cpu(), value), name
        assert model.state_dict()[name].device.type == device.type
    model.load_state_dict(reference.state_dict())  # the round trip the names exist for

    unfused = convert.from_torch(reference, fuse=False)
    assert list(unfused._modules) == [str(i) for i in range(12)]
    assert isinstance(unfused[1], layers.ReLU) and unfused[0].activation is None

    # A ReLU that follows a pool (or a second ReLU) stays a layer; nesting keeps torch's dotted names.
    odd = nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.ReLU()))
    converted = convert.from_torch(odd)
    assert list(converted._modules) == ["0", "1", "2"] and list(converted[2]._modules) == ["0", "1", "3"]
    assert list(converted.state_dict()) == list(odd.state_dict()) == ["2.1.weight", "2.1.bias"]
    x = torch.randn(2, 1, 4, 4, device=device) - 0.5
    assert torch.allclose(converted(tn.Tensor(x)).data, odd.to(device)(x), atol=1e-6)

    with pytest.raises(TypeError, match=r"model\['1'\]: Tanh has no tritonnet equivalent"):
        convert.from_torch(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    with pytest.raises(TypeError, match="must be a torch.nn.Sequential"):
        convert.from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        convert.from_torch(nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect")))


def test_default_models_match_their_torch_twins(seed, device):
    for name in ("digits_cnn", "lenet5", "cifar_cnn"):
        model, twin = models.create(name), models.create_torch(name)
        assert list(model.state_dict()) == list(twin.state_dict()), name
        assert all(model.state_dict()[k].shape == v.shape for k, v in twin.state_dict().items())
    assert models.for_dataset("fashion-mnist:/x") == "lenet5" and models.for_dataset("digits") == "digits_cnn"
    model, twin = models.create("digits_cnn"), models.create_torch("digits_cnn").to(device)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(5, 1, 8, 8, device=device)
    with tn.no_grad():
        out = model(tn.Tensor(x))
    assert relative_error(out.data, twin.double()(x.double()).detach()) < 1e-5


# ----------------------------------------------------------------------------- gradients


def test_lenet_gradients_on_a_batch_of_100_match_torch(seed, device):
    reference = torch_lenet_style()
    images = on_a_binary_grid(reference, (100, 1, 16, 16), device)
    model = layers.from_torch(reference)
    reference64 = copy.deepcopy(reference).double().to(device)
    labels = torch.randint(0, 10, (100,), device=device)
    loss, grads = grads_of(model, images, labels)
    expected_loss = torch.nn.functional.cross_entropy(reference64(images.double()), labels)
    expected_loss.backward()
    expected_value = float(expected_loss.detach())
    assert abs(loss - expected_value) < 1e-5 * abs(expected_value)
    for name, p in reference64.named_parameters():
        assert grads[name].dtype == torch.float32
        assert relative_error(grads[name], p.grad) < 2e-5, name


def test_channels_last_network_matches_torch_and_never_restages_activations(seed, device):
    """A VGG-style net on a channels-last batch: every parameter gradient as torch's (float64),
    activations channels-last from the stem to the flatten (no staging copy of any, nor of a
    gradient; the flatten's reorder is tritonnet's kernel), and the same gradients as the NCHW run
    of the same net."""
    nn = torch.nn
    reference = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 8 -> 4, packed kernels
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 4 -> 2, channels-last kernels
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10))
    images = on_a_binary_grid(reference, (4, 3, 8, 8), device)
    labels = torch.randint(0, 10, (4,), device=device)
    reference64 = copy.deepcopy(reference).double().to(device)
    torch.nn.functional.cross_entropy(reference64(images.double()), labels).backward()
    model = layers.from_torch(reference)
    ops = []

    def record(kernel, grid, args, constexprs, info, run):
        ops.append((info.op, info.shapes[0]))
        return run()

    with tn.runtime.observing(record):
        _, grads_cl = grads_of(model, images.contiguous(memory_format=torch.channels_last), labels)
    staged = [shape for op, shape in ops if op == "to_channels_last" and shape[0] == 4]
    # not even the channels-last conv's grad_out: each pool applies its conv's ReLU gate (its
    # gather routes nothing to windows whose max is <= 0), so the convs' backward kernels read the
    # pools' gradients as they are, ungated (no "_relu" backward ops)
    assert staged == [], ops
    assert not [op for op, _ in ops if op.startswith(("conv2d_dgrad", "conv2d_wgrad")) and op.endswith("_relu")], ops
    assert ("to_contiguous", (4, 16, 2, 2)) in ops
    _, grads_nchw = grads_of(model, images, labels)
    for name, p in reference64.named_parameters():
        assert relative_error(grads_cl[name], p.grad) < 2e-5, name
        assert torch.allclose(grads_cl[name], grads_nchw[name], rtol=1e-5, atol=1e-6), name


def test_batched_gradient_is_the_mean_of_per_example_gradients(seed, device):
    nn = torch.nn
    # Overlapping pool windows (3, stride 2): a position can win in two windows, its gradients add.
    reference = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),
                              nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    n = 12
    images = on_a_binary_grid(reference, (n, 1, 9, 9), device)
    model = layers.from_torch(reference)
    labels = torch.randint(0, 10, (n,), device=device)

    # The premise: examples pick different winners in the same window.
    with tn.no_grad():
        _, winners = F.max_pool2d(model[0](tn.Tensor(images)), 3, 2, return_indices=True)
    assert (winners.data != winners.data[:1]).any(dim=0).float().mean() > 0.5

    _, batched = grads_of(model, images, labels)  # mean over the batch
    per_example = [grads_of(model, images[i:i + 1], labels[i:i + 1])[1] for i in range(n)]
    for name in batched:
        mean = torch.stack([g[name] for g in per_example]).double().mean(0)
        assert relative_error(batched[name], mean) < 1e-5, name
        # and each example's gradient is torch's for that example alone
    one = copy.deepcopy(reference).double().to(device)
    torch.nn.functional.cross_entropy(one(images[3:4].double()), labels[3:4]).backward()
    for name, p in one.named_parameters():
        assert relative_error(per_example[3][name], p.grad) < 1e-5, name


# ----------------------------------------------------------------------------- training runs


def small_digits(n_train, n_test):
    ds = data.load_digits()
    ds.train_images, ds.train_labels = ds.train_images[:n_train], ds.train_labels[:n_train]
    ds.test_images, ds.test_labels = ds.test_images[:n_test], ds.test_labels[:n_test]
    return ds


@pytest.fixture
def torch_ieee_fp32():
    """torch's float32 reference without TF32 (cuDNN allows it for convolutions by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_training_losses_track_torch_step_by_step(seed, device, torch_ieee_fp32):
    """The loop's losses and final weights against torch's, label smoothing included."""
    config = train.TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9, seed=seed,
                               label_smoothing=0.1).resolved()
    ds = small_digits(48, 8)
    model = models.create(config.model)
    twin = models.create_torch(config.model).to(device)
    twin.load_state_dict(model.state_dict())
    losses = []
    optimizer = train.make_optimizer(config, model.parameters())
    train.fit(model, optimizer, ds, config, progress=False, on_step=lambda step, loss: losses.append(loss))

    expected = []
    torch_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(config.epochs):
        for x, y in data.batches(ds.train_images.to(device), ds.train_labels.to(device), 16, seed=seed, epoch=epoch):
            loss = torch.nn.functional.cross_entropy(twin(x), y, label_smoothing=0.1)
            torch_opt.zero_grad()
            loss.backward()
            torch_opt.step()
            expected.append(float(loss.detach()))
    assert len(losses) == len(expected) == 6
    for step, (ours, theirs) in enumerate(zip(losses, expected)):
        assert abs(ours - theirs) <= 1e-4 * abs(theirs), (step, losses, expected)
    for name, p in twin.named_parameters():
        assert relative_error(model.state_dict()[name], p.detach()) < 1e-4, name


def test_tf32_training_runs_tf32_dots_and_restores_the_precision(seed, device):
    """config.tf32 (`tritonnet train --tf32`): every float32 convolution and matmul of the run,
    evaluation included, dots in TF32; the precision the caller had comes back afterwards. The
    CLI's flags reach the config."""
    precisions = []

    def record(kernel, grid, args, constexprs, info, run):
        if "PRECISION" in constexprs:
            precisions.append(constexprs["PRECISION"])
        return run()

    ds = small_digits(16, 8)
    for tf32, expected in ((True, {"tf32"}), (False, {"ieee"})):
        config = train.TrainConfig(epochs=1, batch_size=16, seed=seed, tf32=tf32).resolved()
        model = models.create(config.model)
        precisions.clear()
        with tn.runtime.observing(record):
            train.fit(model, train.make_optimizer(config, model.parameters()), ds, config, progress=False)
        assert set(precisions) == expected and len(precisions) > 10, precisions
        assert tn.get_float32_matmul_precision() == "highest"
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--tf32", "--label-smoothing", "0.2"])
    assert (args.tf32, args.label_smoothing) == (True, 0.2)
    assert parser.parse_args([]).tf32 is False
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        train.TrainConfig(label_smoothing=1.5).resolved()


def test_three_channel_training_runs_channels_last_with_the_same_arithmetic(seed, device):
    """`tritonnet train` runs a network on 3-channel data channels-last by default
    (models.channels_last_for; one-channel data stays NCHW, --no-channels-last opts out): the
    batch is copied once by our kernel and the layers keep the layout, so no staging of the wide
    layers' inputs, and the same kernels' sums in the same order: bitwise the same weights, losses
    and test loss as NCHW. (A small VGG-style net on 8x8 images stands in for cifar_cnn, whose
    32x32 images the interpreter would take several times longer over.)"""
    assert train.TrainConfig(dataset="cifar10:x").resolved().channels_last is True
    assert train.TrainConfig(dataset="digits").resolved().channels_last is False
    assert train.TrainConfig(dataset="cifar10:x", channels_last=False).resolved().channels_last is False
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert [parser.parse_args(a).channels_last for a in ([], ["--channels-last"], ["--no-channels-last"])] == \
        [None, True, False]
    nn = torch.nn
    reference = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 8 -> 4, packed kernels
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 4 -> 2, channels-last kernels
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    images, labels = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    ds = data.Dataset("random", images[:4], labels[:4], images[4:], labels[4:], 10, 0.0, 1.0)
    runs = {}
    for channels_last in (True, False):
        config = train.TrainConfig(dataset="cifar10:x", epochs=1, batch_size=2, optimizer="sgd", lr=0.05,
                                   seed=seed, channels_last=channels_last).resolved()
        model = layers.from_torch(reference)
        losses, staged = [], []

        def record(kernel, grid, args, constexprs, info, run):
            if info.op == "to_channels_last":
                staged.append(info.shapes[0])
            return run()

        with tn.runtime.observing(record):
            records = train.fit(model, train.make_optimizer(config, model.parameters()), ds, config, progress=False,
                                on_step=lambda step, loss: losses.append(loss))
        runs[channels_last] = (losses, records[0]["test_loss"], model.state_dict(), staged)
    (losses, test_loss, weights, staged), (nchw_losses, nchw_test_loss, nchw_weights, nchw_staged) = runs[True], runs[False]
    assert len(losses) == 2 and losses == nchw_losses and test_loss == nchw_test_loss
    assert all(torch.equal(weights[k], nchw_weights[k]) for k in weights)
    # NCHW stages the channels-last conv's input (forward and weight gradient, train and test);
    # channels-last copies each batch once (and stages only weights)
    assert (2, 3, 8, 8) in staged and (2, 16, 4, 4) not in staged, staged
    assert (2, 16, 4, 4) in nchw_staged and len(staged) < len(nchw_staged), nchw_staged


def test_same_seed_gives_bitwise_identical_weights(seed, device):
    ds = small_digits(32, 8)

    def run(run_seed):
        config = train.TrainConfig(epochs=1, batch_size=16, seed=run_seed).resolved()  # defaults: Adam
        torch.manual_seed(run_seed)
        model = models.create(config.model)
        train.fit(model, train.make_optimizer(config, model.parameters()), ds, config, progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}

    first, second, other = run(seed), run(seed), run(seed + 1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# ----------------------------------------------------------------------------- CUDA-graphed steps


class ReplayedByRunning:
    """``graphs.capture`` as the interpreter can do it: capturing calls the step once and undoes
    its running totals (a capture records, it does not run); ``replay()`` calls it again on the
    static inputs and copies what it produced into the tensors the capture returned, as a real
    replay rewrites them. TrainStep's bookkeeping (static batch buffers, p.grad pointing at the
    graph's gradients, the eager optimizer, eager warm-up and last batches) is then exercised on
    the CPU; the real capture is checked on a GPU below."""

    captures = 0

    def __init__(self, step, args):
        self.step, self.args, self.owner = step, args, step.__self__
        totals = self.owner.totals.clone()
        self.outputs = step(*args)
        self.owner.totals.copy_(totals)
        self.grads = [p.grad for p in self.owner.params]
        ReplayedByRunning.captures += 1

    def replay(self):
        bound = [p.grad for p in self.owner.params]  # a replay changes no Python attribute
        outputs = self.step(*self.args)
        self.outputs.copy_(outputs)
        for p, captured, grad in zip(self.owner.params, self.grads, bound):
            getattr(captured, "data", captured).copy_(getattr(p.grad, "data", p.grad))
            p.grad = grad

    @classmethod
    def capture(cls, step, *args, context=None):
        graph = cls(step, args)
        return graph, graph.outputs


def small_run(ds, cuda_graph, seed, optimizer="adam", **config_options):
    config = train.TrainConfig(epochs=2, batch_size=16, optimizer=optimizer, seed=seed, cuda_graph=cuda_graph,
                               **config_options).resolved()
    torch.manual_seed(seed)
    model = models.create(config.model)
    optimizer = train.make_optimizer(config, model.parameters())
    losses = []
    records = train.fit(model, optimizer, ds, config, progress=False, on_step=lambda step, loss: losses.append(loss))
    return losses, records, model.state_dict(), optimizer.state_dict()


def assert_same_training(first, second):
    (losses, records, weights, opt_state), (losses2, records2, weights2, opt_state2) = first, second
    assert losses == losses2
    assert [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second", "graphed_steps")}
            for r in records] == \
        [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second", "graphed_steps")} for r in records2]
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)
    for i, state in opt_state["state"].items():
        assert all(torch.equal(v, opt_state2["state"][i][k]) for k, v in state.items()), i


def test_graphed_training_replays_full_batches_bitwise_like_eager_steps(seed, device, monkeypatch):
    ds = small_digits(40, 8)  # batches of 16, 16, 8 each epoch
    eager = small_run(ds, False, seed)
    monkeypatch.setattr(train.graphs, "capture", ReplayedByRunning.capture)
    ReplayedByRunning.captures = 0
    graphed = small_run(ds, True, seed)
    assert ReplayedByRunning.captures == 1
    # Epoch 1: two eager warm-up steps (the capture after the second), the short batch eagerly;
    # epoch 2: two replays, the first after that eager step rebound p.grad, and the short batch.
    assert [r["graphed_steps"] for r in graphed[1]] == [0, 2]
    assert [r["graphed_steps"] for r in eager[1]] == [0, 0]
    assert_same_training(eager, graphed)
    # The records' loss and accuracy are the device totals of the steps' own values.
    for record, losses in zip(graphed[1], (graphed[0][:3], graphed[0][3:])):
        assert record["train_loss"] == pytest.approx(sum(l * n for l, n in zip(losses, (16, 16, 8))) / 40, rel=1e-6)
        assert record["train_accuracy"] * 40 == pytest.approx(round(record["train_accuracy"] * 40), abs=1e-9)


def test_a_capture_that_fails_or_a_moving_parameter_leaves_the_steps_eager(seed, device, monkeypatch):
    if tn.runtime.INTERPRETED:  # the real capture says why it cannot run
        with pytest.raises(train.graphs.CaptureError, match="interpreter"):
            train.graphs.capture(lambda: None)
    images, labels = torch.randn(48, 1, 8, 8, device=device), torch.randint(0, 10, (48,), device=device)

    def three_steps(optimizer_step=None):
        model = models.create("digits_cnn")
        optimizer = optim.SGD(model.parameters(), lr=0.01)
        if optimizer_step is not None:
            optimizer.step = lambda: optimizer_step(optimizer)
        train_batch = train.TrainStep(model, optimizer, batch_size=16, cuda_graph=True)
        for i in range(3):
            train_batch(images[16 * i:16 * (i + 1)], labels[16 * i:16 * (i + 1)])
        return train_batch

    def refuse(step, *args, context=None):
        raise train.graphs.CaptureError("capture failed: RuntimeError: an op waited for the device")

    monkeypatch.setattr(train.graphs, "capture", refuse)
    refused = three_steps()
    assert refused.graph is None and refused.graph_error.endswith("an op waited for the device")
    assert refused.eager_steps == 3 and refused.graphed_steps == 0

    def step_that_reallocates(optimizer):
        type(optimizer).step(optimizer)
        for p in optimizer.params:
            p.data = p.data.clone()

    monkeypatch.setattr(train.graphs, "capture", ReplayedByRunning.capture)
    moving = three_steps(step_that_reallocates)
    assert moving.graph is None and "replaces parameter storage" in moving.graph_error
    assert moving.eager_steps == 3


@pytest.mark.skipif(tn.runtime.INTERPRETED, reason="a real CUDA graph: the GPU check's test stage runs it")
def test_cuda_graphed_training_is_bitwise_eager_training(seed, device):
    from tritonnet.kernels import conv as conv_kernels
    from tritonnet.kernels import linear as linear_kernels

    # fixed tiles: the GPU check's test stage would otherwise autotune every new shape here
    saved = conv_kernels.set_autotune(False), linear_kernels.set_autotune(False)
    try:
        run_graphed_and_eager(seed)
    finally:
        conv_kernels.set_autotune(saved[0])
        linear_kernels.set_autotune(saved[1])


def run_graphed_and_eager(seed):
    ds = small_digits(56, 8)
    for model in ("digits_cnn", "lenet5"):
        if model == "lenet5":  # 28x28 images
            ds.train_images = torch.nn.functional.interpolate(ds.train_images, size=(28, 28))
            ds.test_images = torch.nn.functional.interpolate(ds.test_images, size=(28, 28))
        eager = small_run(ds, False, seed, model=model)
        graphed = small_run(ds, True, seed, model=model)
        assert [r["graphed_steps"] for r in graphed[1]] == [1, 3], model  # batches of 16, 16, 16, 8
        assert_same_training(eager, graphed)


# ----------------------------------------------------------------------------- memory


def test_tape_saves_at_most_0_6x_what_torch_autograd_saves(seed):
    before = tn.tape.saved_bytes()
    report = train.saved_for_backward("lenet5", batch_size=16, seed=seed)
    # Both counts include at least the input images, which the first conv's weight gradient needs.
    assert min(report["tritonnet_saved_bytes"], report["torch_saved_bytes"]) >= 16 * 28 * 28 * 4, report
    assert report["ratio"] <= 0.6, report
    assert tn.tape.saved_bytes() == before  # dropping the loss freed everything the graph saved
