"""A sweep job's config made from another job's, where Hydra would only have set values.

Composing a job's config reads the config files again and merges them (~0.09 s a job on the
grid's configs, in the worker, between two jobs). Jobs of one sweep mostly differ in plain
values (`key=value` on a key the config has, not a config group), and such an override does not
change the defaults list: Hydra applies it to the composed config (OmegaConf.update, merge=True,
ConfigLoaderImpl._apply_overrides_to_config) and lists it in hydra.overrides.task and
hydra.job.override_dirname. `derived` does the same to a copy of the other job's config (~0.007
s); the callbacks' precheck (task configs) and the lr_groups launcher (full configs) use it.
tests/experiments/test_compose.py compares it with Hydra's own composition.
"""

from __future__ import annotations

import copy
from typing import Any

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

_ABSENT = object()


class NotApplied(Exception):
    """An override whose value the config refuses (its OmegaConf error is the cause)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def derived(base: DictConfig, base_overrides: list[str], overrides: list[str]) -> DictConfig | None:
    """The config Hydra composes for `overrides`, made from `base`, the one it composed for
    `base_overrides` (with or without its hydra node); None where that is not certain: the two
    differ in more than plain values, or in how many overrides there are, or a changed key is
    set by another override too. NotApplied for a value the key refuses."""
    parse = OverridesParser.create().parse_overrides
    if len(overrides) != len(base_overrides):
        return None
    before, after = parse(list(base_overrides)), parse(list(overrides))
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a.input_line != b.input_line]
    if not all(_plain(a, base) and _plain(b, base) and a.key_or_group == b.key_or_group
               for a, b in changed):  # fmt: skip
        return None
    keys = [o.key_or_group for o in after if not _group_choice(o, base)]
    if any(sum(_overlap(b.key_or_group, k) for k in keys) > 1 for _, b in changed):
        return None
    cfg = copy.deepcopy(base)
    for _, o in changed:
        try:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except Exception as exc:
            raise NotApplied(str(o.input_line)) from exc
    if "hydra" in cfg:
        _list(cfg, changed)
    return cfg


def _plain(override: Override, cfg: DictConfig) -> bool:
    """A `key=value` override of a value `cfg` has (a leaf or a list: not a config group)."""
    if override.type != OverrideType.CHANGE or override.package is not None:
        return False
    if override.is_hydra_override() or override.is_sweep_override():
        return False
    node = OmegaConf.select(cfg, override.key_or_group, default=_ABSENT)
    return node is not _ABSENT and not isinstance(node, DictConfig)


def _group_choice(override: Override, cfg: DictConfig) -> bool:
    """`group=option` (optim=sgd): applied to the defaults list, before any value."""
    node = OmegaConf.select(cfg, override.key_or_group, default=_ABSENT)
    return isinstance(node, DictConfig) and isinstance(override.value(), str)


def _overlap(a: str, b: str) -> bool:
    """One key is the other or inside it (a.b and a.b.c): their order would matter."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _list(cfg: DictConfig, changed: list[tuple[Override, Override]]) -> None:
    """hydra.overrides.task and hydra.job.override_dirname as Hydra makes them."""
    new = {a.input_line: b.input_line for a, b in changed}
    task = [new.get(line, line) for line in cfg.hydra.overrides.task]
    naming: Any = cfg.hydra.job.config.override_dirname
    with open_dict(cfg.hydra):
        cfg.hydra.overrides.task = task
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=OverridesParser.create().parse_overrides(task),
            kv_sep=naming.kv_sep,
            item_sep=naming.item_sep,
            exclude_keys=naming.exclude_keys,
        )
