"""The README's Python example runs as printed (an example that drifted from the API would fail)."""
import pathlib
import re

import torch


def test_readme_python_example_runs():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Use it from Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    names = {}
    exec(compile(code, "README.md", "exec"), names)
    x, model, losses = names["x"], names["model"], names["losses"]
    assert losses.shape == (100,)
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
