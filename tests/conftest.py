"""Shared test settings, and how the suite runs in two processes (pytest-xdist, `-n 2`).

With `-n 2` the distribution is `--dist loadgroup` unless another is asked for: every test is
its own unit of work, except:
- tests that share an expensive module- or session-scoped fixture defined under tests/ (a
  reference training run, a sweep served to the browser...) form one group, so it is built
  once, in one worker;
- the `cluster` tests form the group "cluster", which only the worker gw0 runs: it is the one
  that sets the cluster up in the background as soon as it has collected the tests
  (tests/cluster/conftest.py), and two set-ups on one machine would fight over /etc/slurm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch

# Tiny tensors: one thread avoids OpenMP hand-off costs, and the CI machine has 2 cores.
torch.set_num_threads(1)

# Ctrl-C as in a terminal. A shell without job control starts a background command (`.ci/run
# &`, nohup) with SIGINT ignored, and an ignored signal stays ignored across exec: Python then
# installs no KeyboardInterrupt handler, `_thread.interrupt_main()` does nothing and a SIGINT
# sent to a training process is lost, so the tests of Ctrl-C would fail for how the suite was
# started. A handled signal is reset to its default across exec: the processes the tests start
# get Python's own handler again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TESTS = Path(__file__).resolve().parent
CLUSTER_GROUP = "cluster"
CLUSTER_WORKER = "gw0"  # the xdist worker that sets the cluster up and runs its tests
# Shared fixtures cheap enough to build in each worker rather than tie their tests together.
CHEAP_SHARED_FIXTURES = {"_empty_store"}  # a migrated empty sqlite store: 1-3 s
# Where the workers leave {nodeid: group} for the scheduler (set by the main process). xdist's
# own loadgroup renames item._nodeid, which pytest 9.2 no longer reads: its groups are lost.
GROUPS_ENV = "MTL_XDIST_GROUPS"


def xdist_worker() -> str | None:
    """This process's xdist worker id (gw0, gw1 ...), or None when not under xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def is_cluster_worker() -> bool:
    """Whether this process is the one that may set the cluster up and run its tests."""
    return xdist_worker() in (None, CLUSTER_WORKER)


def _shared_fixture_files(item: pytest.Item) -> list[str]:
    """Files under tests/ defining the module- or session-scoped fixtures the test uses."""
    files = set()
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in info.name2fixturedefs.items() if info else ():
        fixture = defs[-1]
        if fixture.scope == "function" or name in CHEAP_SHARED_FIXTURES:
            continue
        code = getattr(fixture.func, "__code__", None)
        if code is None:
            continue
        path = Path(code.co_filename)
        if path.is_relative_to(TESTS):
            files.add(str(path.relative_to(TESTS.parent)))
    return sorted(files)


def _group(item: pytest.Item) -> str | None:
    """The item's xdist group (see the module's docstring), or None."""
    if mark := item.get_closest_marker("xdist_group"):  # an explicit one, as xdist reads it
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    if item.get_closest_marker("cluster"):
        return CLUSTER_GROUP
    files = _shared_fixture_files(item)
    return "+".join(files) if files else None


@pytest.hookimpl(trylast=True)  # after the cluster tests were moved to the end
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In an xdist worker: write the groups where the main process's scheduler reads them."""
    path = os.environ.get(GROUPS_ENV)
    if xdist_worker() is None or not path:
        return
    groups = {item.nodeid: group for item in items if (group := _group(item))}
    tmp = f"{path}.{xdist_worker()}"
    Path(tmp).write_text(json.dumps(groups))
    os.replace(tmp, path)  # every worker collects the same tests: the same file


def pytest_configure(config: pytest.Config) -> None:
    """`-n N` alone distributes by xdist's `load`: make it `loadgroup`, which keeps the groups
    below together (an explicit `--dist` is left as it is)."""
    asked = any(arg.startswith("--dist") for arg in config.invocation_params.args)
    if getattr(config.option, "dist", None) == "load" and not asked:
        config.option.dist = "loadgroup"
    if getattr(config.option, "dist", "no") == "loadgroup" and xdist_worker() is None:
        folder = tempfile.mkdtemp(prefix="mtl-xdist-")
        os.environ[GROUPS_ENV] = str(Path(folder) / "groups.json")  # the workers inherit it
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup`, with the cluster group pinned to CLUSTER_WORKER."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ClusterPinnedScheduling(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once all workers have collected
                path = Path(os.environ.get(GROUPS_ENV, "/nonexistent"))
                # No file: no groups (the cluster fixture then refuses to run off gw0).
                self.groups = json.loads(path.read_text()) if path.is_file() else {}
            return self.groups.get(nodeid, nodeid)

        def _allowed(self, node, scope: str) -> bool:
            if scope != CLUSTER_GROUP:
                return True
            owners = [n for n in self.nodes if n.gateway.id == CLUSTER_WORKER]
            return not owners or node in owners  # gw0 gone (crashed): anyone may run it

        def _assign_work_unit(self, node) -> None:
            if CLUSTER_GROUP in self.workqueue:  # last, whatever the size order: it waits
                self.workqueue.move_to_end(CLUSTER_GROUP)  # on a set-up begun at collection
            scope = next((s for s in self.workqueue if self._allowed(node, s)), None)
            if scope is None:
                return
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not any(self._allowed(node, s) for s in self.workqueue):
                node.shutdown()  # what is left is gw0's: this worker is done
                return
            super()._reschedule(node)

    return ClusterPinnedScheduling(config, log)
