"""Live progress: while a job trains, its run's mean curves grow in the MLflow UI.

The shards write every evaluation into shared memory (training.LiveCurves); a thread of the
job's process sends the points that every replica has reached, as the job run's mean curves,
every `tracking.live_every_s` seconds. They are the values the finished job stores (the same
function computes them), and the upload leaves out the steps already sent, so no point is
stored twice. The thread never holds training up: one attempt per interval, no retries; if
the store fails, live progress stops with one warning and the bundle keeps everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from experiments.record_format import CURVES
from experiments.records import mean_metrics
from experiments.training import LiveCurves

log = logging.getLogger(__name__)


class LiveSender:
    """Sends a job's mean curves from `live` to its run, from a daemon thread."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        live: LiveCurves,
        epochs: list[int],
        sizes: Mapping[str, int],
        every_s: float,
    ) -> None:
        self.client, self.run_id, self.live = client, run_id, live
        self.epochs, self.sizes, self.every_s = epochs, dict(sizes), every_s
        self.sent = 0  # evaluation points sent
        self.seconds = 0.0  # CPU time of the sending thread: what it can take from training
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once). Call it after any fork of the training workers: a process
        forked while this thread sends could inherit a lock it holds."""
        if self._thread is None and self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="live-progress", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.send()
            except Exception as exc:  # the store: training goes on, the upload sends it all
                log.warning("live progress stopped: the store refused it (%s)", exc)
                return

    def send(self) -> int:
        """Send the points every replica has reached since the last call; returns how many."""
        from experiments.records import mean_curves
        from experiments.tracking import MAX_METRICS_PER_BATCH, now_ms

        t = time.thread_time()
        n = int(self.live.done.min())
        if n <= self.sent:
            return 0
        part = slice(self.sent, n)
        curves = {k: self.live.metrics[i, :, part].numpy() for i, k in enumerate(CURVES)}
        metrics = mean_metrics(self.epochs[part], mean_curves(curves, self.sizes), now_ms())
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
        count, self.sent = n - self.sent, n
        self.seconds += time.thread_time() - t
        return count

    def stop(self) -> None:
        """Stop the thread (waiting at most a few seconds for a call in flight)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
