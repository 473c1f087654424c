"""The README stays true: its Python example runs and computes what it says, and CI runs its
test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LR = 0.01  # the example's SGD learning rate


def _torch_mse(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The example's model and loss written in plain torch: Linear (x W^T + b) and Tanh layers
    in turn, the last Linear without Tanh, then the mean of (s - y)^2 (torch.nn.MSELoss)."""
    h = x
    pairs = list(zip(params[::2], params[1::2], strict=True))
    for i, (w, b) in enumerate(pairs):
        h = h @ w.T + b
        if i < len(pairs) - 1:
            h = torch.tanh(h)
    return ((h - y) ** 2).mean()


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    torch.manual_seed(0)  # the example draws x and y from the global generator
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    value, x, y, model = scope["value"], scope["x"], scope["y"], scope["model"]
    assert value.shape == () and value.dtype == torch.float32
    assert x.shape == y.shape == (25, 2)
    after = [p.clone() for p, _ in model.params()]
    grads = [g.clone() for _, g in model.params()]
    assert [tuple(p.shape) for p in after] == [
        (25, 2), (25,), (25, 25), (25,), (25, 25), (25,), (2, 25), (2,),
    ]  # fmt: skip
    # The weights before the step, as SGD left them: p_before = p_after + lr * grad.
    before = [(p + LR * g).requires_grad_() for p, g in zip(after, grads, strict=True)]
    expected = _torch_mse(before, x, y)
    # The loss the example prints is MSE of this model, to float32 rounding; an untrained
    # net's outputs against targets uniform in [0, 1] put it well below 1 and above 0.
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0.05 < value.item() < 0.5
    # backward gave autograd's gradients of that loss, and the step went downhill.
    expected.backward()
    for g, p in zip(grads, before, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert scope["loss"](model(x), y).item() < value.item()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"TEST_CMD='([^']+)'", ci).group(1)
    lines = (ROOT / "README.md").read_text().splitlines()
    # The second fenced command of the README is the test command.
    commands = [lines[i + 1] for i, line in enumerate(lines) if line.strip() == "```bash"]
    assert commands[1] == cmd
    assert commands[0].startswith(cmd.split(" && .venv/bin/python -m pytest")[0])
