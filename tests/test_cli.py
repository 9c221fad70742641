"""`tritonnet train` / `tritonnet eval` on tiny runs, in-process through cli.main (saves the import
time of a subprocess): checkpoint files, the JSON sidecar, eval's report, exact resume, errors."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tritonnet import cli, models

TINY = ["--train-limit", "32", "--test-limit", "20", "--batch-size", "16", "--no-progress"]


def run(capsys, *argv):
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def reported_accuracy(out):
    match = re.search(r"test accuracy: ([0-9.]+)% \((\d+)/(\d+)\)", out)
    assert match, out
    return float(match.group(1)), int(match.group(2)), int(match.group(3))


def test_train_then_eval_then_resume_exactly(tmp_path, capsys, seed):
    straight = str(tmp_path / "straight.safetensors")
    smoothing = ["--label-smoothing", "0.05"]  # saved in the sidecar: the resumed run must smooth too
    out = run(capsys, "train", "--epochs", "2", "--seed", str(seed), "--checkpoint", straight, *smoothing, *TINY)
    percent, correct, total = reported_accuracy(out)
    assert total == 20 and abs(percent - 100 * correct / 20) < 0.01
    assert re.search(r"time: [0-9.]+ s training, [0-9.]+ s in total", out)

    weights = load_file(straight)
    assert sorted(weights) == sorted(models.create_torch("digits_cnn").state_dict())  # torch's names
    twin = models.create_torch("digits_cnn")
    twin.load_state_dict(weights)  # the checkpoint loads straight into torch
    with open(tmp_path / "straight.json") as f:
        sidecar = json.load(f)
    assert sidecar["epoch"] == 2 and sidecar["config"]["model"] == "digits_cnn"
    assert sidecar["config"]["optimizer"] == "adam" and sidecar["config"]["seed"] == seed
    assert sidecar["config"]["label_smoothing"] == 0.05 and sidecar["config"]["tf32"] is False
    assert len(sidecar["config"]["history"]) == 2
    assert abs(sidecar["test_accuracy"] * 100 - percent) < 0.01
    assert (tmp_path / "straight.optim.safetensors").exists()

    out = run(capsys, "eval", straight)
    assert reported_accuracy(out) == (percent, correct, total)
    assert "after 2 epochs on digits" in out

    # One epoch, then --resume to two: the same weights, bit for bit, as two epochs straight.
    resumed = str(tmp_path / "resumed.safetensors")
    run(capsys, "train", "--epochs", "1", "--seed", str(seed), "--checkpoint", resumed, *smoothing, *TINY)
    out = run(capsys, "train", "--resume", "--epochs", "2", "--checkpoint", resumed, "--no-progress")
    assert reported_accuracy(out) == (percent, correct, total)
    again = load_file(resumed)
    for name, value in weights.items():
        assert torch.equal(again[name], value), name


def test_cli_errors(tmp_path, capsys):
    missing = str(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        cli.main(["eval", missing])
    with pytest.raises(SystemExit, match="--resume needs --checkpoint"):
        cli.main(["train", "--resume"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is malformed"):
        cli.main(["eval", str(tmp_path / "bad.safetensors")])
    (tmp_path / "bad.json").write_text(json.dumps({"config": {"model": "digits_cnn"}, "epoch": 1}))
    with pytest.raises(ValueError, match="bad.safetensors is not a readable safetensors file"):
        cli.main(["eval", str(tmp_path / "bad.safetensors")])
    with pytest.raises(ValueError, match="dataset must be one of"):
        cli.main(["train", "--dataset", "imagenet", "--checkpoint", str(tmp_path / "x.safetensors"), *TINY])
    with pytest.raises(SystemExit):
        cli.main(["train", "--optimizer", "rmsprop"])
    capsys.readouterr()
