"""Runs left RUNNING by a process that no longer exists, found and ended.

Every run the harness opens carries its process's identity: host, pid, the pid's start time
(so a reused pid is not mistaken for it) and the boot id. A sweep or job run also gets a
heartbeat tag every minute while its process lives. A RUNNING run is *gone* when its process
on this host is not there any more (or the host rebooted), or, on another host, when its
heartbeat is older than STALE_S. `reap` ends gone runs: when the job's bundle is on this
machine and holds trained results, the bundle is uploaded (its runs end FINISHED, complete);
otherwise they end KILLED with the reason in `mtl.error`. Jobs, the sync and the analysis
call it on the experiments they look at.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.record_format import Tag

log = logging.getLogger(__name__)

STALE_S = 600.0  # a heartbeat older than this (10 beats missed) means the process is gone


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str:
    """The pid's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or ""
    if there is no such process or it has ended (a zombie, not yet waited for)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] == "Z" else fields[19]


def process_tags(pid: int | None = None) -> dict[str, str]:
    """The tags that identify this process (or `pid`) to a later reader."""
    pid = os.getpid() if pid is None else pid
    return {
        Tag.HOST: socket.gethostname(),
        Tag.PID: str(pid),
        Tag.PID_START: _pid_start(pid),
        Tag.BOOT_ID: _boot_id(),
    }


def process_gone(tags: Mapping[str, str], start_time_ms: int | None, now_ms: int) -> str | None:
    """Why the process that owns a run with these tags is gone, or None if it may be alive."""
    host, pid = tags.get(Tag.HOST), tags.get(Tag.PID, "")
    if not host or not pid.isdigit():
        return None  # not a run of this harness's (or of an older version): leave it
    if host == socket.gethostname() and Path("/proc").is_dir():
        if tags.get(Tag.BOOT_ID) and tags[Tag.BOOT_ID] != _boot_id():
            return f"host {host} has rebooted since process {pid} started"
        started = _pid_start(int(pid))
        if not started or (tags.get(Tag.PID_START) and started != tags[Tag.PID_START]):
            return f"process {pid} on {host} no longer exists"
        return None
    beat = tags.get(Tag.HEARTBEAT)
    last = int(beat) if beat and beat.isdigit() else start_time_ms
    if last is not None and now_ms - last > STALE_S * 1000:
        return f"no heartbeat from process {pid} on {host} for {(now_ms - last) / 60000:.0f} min"
    return None


def reap(tracker: Any, say=log.info) -> list[tuple[str, str]]:
    """End this experiment's RUNNING runs whose process is gone; returns (run id, new status)."""
    running = tracker.find_runs("attributes.status = 'RUNNING'")
    now = int(time.time() * 1000)
    gone = {}
    for run in running:
        why = process_gone(run.data.tags, run.info.start_time, now)
        if why is not None:
            gone[run.info.run_id] = (run, why)
    if not gone:
        return []
    done = _finish_from_bundles(tracker, gone, say)
    finished = {run_id for run_id, _ in done}
    for run_id, (run, why) in gone.items():
        if run_id in finished:
            continue
        kind = run.data.tags.get(Tag.KIND, "run")
        tracker.log_batch(run_id, tags={Tag.ERROR: f"{why} (found by the reaper)"})
        tracker.call(tracker.client.set_terminated, run_id, "KILLED")
        say(f"ended {kind} run {run_id} KILLED: {why}")
        done.append((run_id, "KILLED"))
    return done


def _finish_from_bundles(tracker: Any, gone: dict, say) -> list[tuple[str, str]]:
    """Upload the bundles of gone jobs that hold trained results; their runs end FINISHED."""
    from experiments.bundle import Bundle, BundleError
    from experiments.upload import upload

    done = []
    paths = {run.data.tags.get(Tag.BUNDLE) for run, _ in gone.values()} - {None, ""}
    for path in sorted(paths):
        try:
            bundle = Bundle.open(Path(path))
        except BundleError:
            continue  # on another machine, or removed
        if bundle.state == "training":
            continue
        with bundle.locked(wait=False) as mine:
            if not mine:
                continue  # its job or a sync is uploading it right now
            report = upload(bundle, tracker)
        say(f"completed the runs of {bundle.path} from its bundle ({report.summary()})")
        done += [(rid, "FINISHED") for rid in report.run_ids]
    return done
