"""The README stays true: its Python example runs, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["value"].item() > 0


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"TEST_CMD='([^']+)'", ci).group(1)
    lines = (ROOT / "README.md").read_text().splitlines()
    # The second fenced command of the README is the test command.
    commands = [lines[i + 1] for i, line in enumerate(lines) if line.strip() == "```bash"]
    assert commands[1] == cmd
    assert commands[0].startswith(cmd.split(" && .venv/bin/python -m pytest")[0])
