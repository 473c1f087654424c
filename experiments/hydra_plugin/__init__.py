"""Installed as `hydra_plugins.minitorch_lab` (pyproject.toml maps it here): Hydra instantiates
launchers only from the hydra_plugins namespace. The launcher is lr_groups_launcher."""
