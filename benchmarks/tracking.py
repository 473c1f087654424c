"""What logging a whole job costs: one report bundle uploaded into sqlite, a local `mlflow
server` on sqlite and a server on PostgreSQL, side by side, against the job's training time.

Every round uploads the same bundle (experiments.upload.upload, as the job does right after
training: the replica folders and figures are made afresh) into a fresh store of each kind, in
turn, and checks that everything arrived: the replica runs FINISHED, every curve point in the
metric history, every artifact. Medians over the rounds, and the ratio to the job's
time/train_s (the targets: sqlite <= 0.10x, server <= 0.35x).

The PostgreSQL server is a private one (initdb in a temporary folder, its own port; as root it
runs as the `postgres` user), so it needs the server binaries (Debian: apt-get install
postgresql) and psycopg2; without them that column is skipped with the reason.

Run:
  python benchmarks/tracking.py --bundle <hydra run dir>/bundle [--rounds 3]
  python benchmarks/tracking.py --train        # trains the report study first (~45 s)
  python benchmarks/tracking.py --backends sqlite,server   # a subset
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BACKENDS = ("sqlite", "server", "server-pg")
PARTS = ("create", "metrics", "artifacts_wall", "finish", "server_cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(uri: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited ({proc.returncode}): {log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server on {uri} did not answer /health in {timeout:g} s")


class Server:
    """`mlflow server --workers N` on a backend store, serving the artifacts itself (clients get
    mlflow-artifacts: URIs, as on a cluster); stopped by its process group."""

    def __init__(self, root: Path, backend_uri: str, workers: int = 1) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.log = root / "server.log"
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                 "--port", self.uri.rsplit(":", 1)[1], "--workers", str(workers),
                 "--backend-store-uri", backend_uri,
                 "--serve-artifacts", "--artifacts-destination", str(root / "art")],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            _wait_http(self.uri, self.proc, self.log)
        except BaseException:
            self.stop()
            raise

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server's processes (its session)."""
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.proc.pid:  # session id
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Postgres:
    """A private PostgreSQL server in `root` (trust auth on 127.0.0.1, its own port)."""

    def __init__(self, root: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
        initdb = bins[-1] if bins else shutil.which("initdb")
        if not initdb:
            raise RuntimeError("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise RuntimeError("psycopg2 is not installed (pip install psycopg2-binary)") from None
        bindir = Path(initdb).parent
        self.data = root / "pgdata"
        self.port = free_port()
        self.user: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
            self.data.mkdir()
            shutil.chown(self.data, "postgres", "postgres")
            for p in (root, *root.parents):  # the postgres user must reach its data folder
                os.chmod(p, os.stat(p).st_mode | 0o001)
        subprocess.run([*self.user, str(initdb), "-D", str(self.data), "-U", "mtl",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
        self.log = root / "postgres.log"
        with open(self.log, "w") as out:
            if self.user:
                shutil.chown(self.log, "postgres", "postgres")
            self.proc = subprocess.Popen(
                [*self.user, str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p",
                              str(self.port)], capture_output=True).returncode != 0:  # fmt: skip
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start: {self.log.read_text()[-1500:]}")
            time.sleep(0.3)
        self.bindir = bindir
        self.n = 0

    def new_database(self) -> str:
        self.n += 1
        name = f"mlflow{self.n}"
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "mtl", name], check=True, capture_output=True)  # fmt: skip
        return f"postgresql+psycopg2://mtl@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)  # fast shutdown
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _version(path: str) -> float:
    try:
        return float(Path(path).parents[1].name)
    except ValueError:
        return 0.0


def train_bundle(root: Path) -> Path:
    """Train the report study (into a throw-away sqlite store); returns its bundle."""
    run_dir = root / "train"
    cmd = [sys.executable, "-m", "experiments.train", "experiment=report",
           f"tracking.uri=sqlite:///{root}/train.db", "tracking.experiment=bench-train",
           "trainer.progress=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    print("training the report study:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return run_dir / "bundle"


def fresh_copy(bundle: Path, dst: Path) -> Path:
    """The bundle as a job has it right after training: no run ids, no replica folders."""
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("replicas", "job", ".*.tmp"))
    manifest = json.loads((dst / "bundle.json").read_text())
    for key in ("job_run_id", "replica_run_ids", "logged_ms", "sweep_run_id"):
        manifest.pop(key, None)
    manifest["state"] = "trained"
    (dst / "bundle.json").write_text(json.dumps(manifest))
    return dst


def check_arrived(
    uri: str, experiment: str, bundle: Path, history: int | None, tolerance: float
) -> str:
    """Everything of the bundle in the store, or AssertionError: what is missing. `history`,
    `tolerance`: the points per curve expected in the metric history, as `curve_points`
    chooses them (None: all); curves.csv has all."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from experiments.record_format import CURVES, VERSION, Kind, Tag, curve_metric, where
    from experiments.tracking import curve_points

    result = np.load(bundle / "result.npz")
    n_runs, n_points = result["train_loss"].shape
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], where(**{Tag.KIND: Kind.REPLICA}),
                                  max_results=1000, page_token=token)  # fmt: skip
        runs += page
        token = page.token
        if not token:
            break
    assert len(runs) == n_runs, f"{len(runs)} replica runs, expected {n_runs}"
    assert all(r.info.status == "FINISHED" for r in runs), "replica runs not FINISHED"
    row = {int(s): i for i, s in enumerate(result["seeds"])}
    epochs = [int(e) for e in result["eval_epochs"]]
    n_history = []
    for run in runs[:: max(1, len(runs) // 5)]:  # a sample: histories are one query per curve
        i = row[int(run.data.tags[Tag.SEED])]
        for curve in CURVES:
            values = result[curve][i].tolist()
            kept = range(len(values))
            if history and len(values) > history:
                kept = curve_points(epochs, values, history, tolerance)
            want = [epochs[k] for k in kept]
            hist = client.get_metric_history(run.info.run_id, curve_metric(curve, VERSION))
            got = sorted(m.step for m in hist)
            assert got == want, f"{curve}: steps {got[:8]}..., expected {want[:8]}..."
            n_history.append(len(got))
        with tempfile.TemporaryDirectory() as tmp:
            csv = client.download_artifacts(run.info.run_id, "curves.csv", tmp)
            rows = len(Path(csv).read_text().splitlines()) - 1
        assert rows == n_points, f"curves.csv: {rows} rows, expected {n_points}"
    files = 0
    for run in runs:
        top = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"curves.csv", "config.yaml"} <= top, f"run {run.info.run_id} artifacts: {top}"
        files += len(top)
    return (
        f"{len(runs)} FINISHED runs; curves.csv {n_points} points, metric history "
        f"{min(n_history)}-{max(n_history)} points a curve (median {int(np.median(n_history))}, "
        f"the steps curve_points chooses); {files} artifacts (top level)"
    )


def upload_once(bundle: Path, uri: str, experiment: str) -> dict[str, float]:
    from experiments.bundle import Bundle
    from experiments.tracking import Tracker
    from experiments.upload import upload

    t0 = time.perf_counter()
    tracker = Tracker(uri, experiment)
    report = upload(Bundle.open(bundle), tracker)
    total = time.perf_counter() - t0
    parts = {k.removeprefix("logging_"): v for k, v in report.timings.items()}
    return {
        "total": total,
        "history": tracker.history_points or 0,
        "tolerance": tracker.history_tolerance,
        **parts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a job bundle of the report study")
    ap.add_argument("--train", action="store_true", help="train the report study first")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--train-s", type=float, help="training time to compare with "
                    "(default: the bundle's time/train_s)")  # fmt: skip
    ap.add_argument("--server-workers", type=int, default=4,
                    help="mlflow server --workers (4: mlflow's default)")  # fmt: skip
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    root = Path(tempfile.mkdtemp(prefix="mtl-bench-tracking-"))
    servers: list = []
    try:
        if args.train:
            args.bundle = train_bundle(root)
        if args.bundle is None:
            ap.error("give --bundle <hydra run dir>/bundle or --train")
        job = json.loads((args.bundle / "job.json").read_text())
        timings = job.get("timings", {})
        train_s = args.train_s or float(timings.get("train", timings.get("time_train_s", 0)))
        pg = None
        if "server-pg" in backends:
            try:
                pg = Postgres(root / "pg")
                servers.append(pg)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                detail = getattr(exc, "stderr", b"") or b""
                print(f"server-pg skipped: {exc} {detail.decode(errors='replace')[-300:]}")
                backends.remove("server-pg")
        results: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
        checks: dict[str, str] = {}
        for r in range(args.rounds):
            for backend in backends:  # side by side: one of each per round
                where_ = root / f"{backend}-{r}"
                bundle = fresh_copy(args.bundle, where_ / "bundle")
                server = None
                if backend == "sqlite":
                    uri = f"sqlite:///{where_}/mlflow.db"
                else:
                    store = (pg.new_database() if backend == "server-pg"
                             else f"sqlite:///{where_}/server.db")  # fmt: skip
                    server = Server(where_ / "srv", store, args.server_workers)
                    uri = server.uri
                try:
                    cpu0 = server.cpu_s() if server else 0.0
                    results[backend].append(upload_once(bundle, uri, "bench"))
                    results[backend][-1]["server_cpu"] = server.cpu_s() - cpu0 if server else 0.0
                    history = results[backend][-1]["history"] or None
                    tolerance = results[backend][-1]["tolerance"]
                    checks[backend] = check_arrived(uri, "bench", bundle, history, tolerance)
                finally:
                    if server is not None:
                        server.stop()
                shutil.rmtree(where_, ignore_errors=True)
                t = results[backend][-1]
                print(f"round {r + 1} {backend:<10} logging {t['logging']:6.2f} s  "
                      + "  ".join(f"{p} {t.get(p, 0):.2f}" for p in PARTS), flush=True)  # fmt: skip
        print(f"\nreport bundle, {args.rounds} round(s), medians; training {train_s:.1f} s")
        head = f"{'store':<12}{'logging s':>10}{'x train':>9}" + "".join(f"{p:>16}" for p in PARTS)
        print(head)
        for backend, rounds in results.items():
            med = {k: statistics.median(x.get(k, 0.0) for x in rounds) for k in rounds[0]}
            ratio = med["logging"] / train_s if train_s else float("nan")
            print(f"{backend:<12}{med['logging']:>10.2f}{ratio:>9.3f}"
                  + "".join(f"{med.get(p, 0):>16.2f}" for p in PARTS))  # fmt: skip
        for backend, text in checks.items():
            print(f"arrived in {backend}: {text}")
    finally:
        for s in reversed(servers):
            s.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
