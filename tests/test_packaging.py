"""pyproject.toml lists its packages by name (the Hydra launcher is installed from
experiments/hydra_plugin as hydra_plugins.minitorch_lab): a new package folder must be listed
too, or an installed (non-editable) copy would lack it."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the project supports 3.10 too
ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    where = {name: ROOT / folder for name, folder in setup["package-dir"].items()}
    listed = {name: where.get(name, ROOT / name.replace(".", "/")) for name in setup["packages"]}
    assert all((folder / "__init__.py").is_file() for folder in listed.values()), listed
    folders = {
        init.parent
        for top in ("minitorch", "experiments", "analysis")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert folders == set(listed.values())
