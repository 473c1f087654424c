"""One training epoch of the report's model, side by side: torch.nn + autograd vs minitorch.

An epoch is 40 steps of batch 25 (1000 points) of the 2-25-25-25-2 Tanh model with MSE and SGD.
Everything is measured in this one process, as medians of repeated blocks, at 1 and 2 threads:

  torch.nn     torch.nn.Sequential + autograd + torch.optim.SGD, one model
  modules      minitorch Sequential.forward/backward + SGD.step, one model
  fused        minitorch FusedMLPStep.epoch (the harness's path, minitorch/fast), one model,
               kernel "auto" (= "native", the compiled kernel), and the portable "torch" kernel
  fused R=k    FusedMLPStep.epoch on k replicas at once; reported per replica-epoch (native;
               R=110 also with the torch kernel)

Then the native kernel's arithmetic throughput against the machine's practical FP32 peak,
torch's own sgemm (2048 x 2048 x 2048) on the same threads, measured in the same interleaved
rounds: GFLOP/s (forward, weight gradients and input gradients, 2 flop per multiply-add: 6 x
1350 flop per row, 8.1 MFLOP per replica-epoch, as benchmarks/study.py counts) and the
fraction of that peak, for the report's workload (110 replicas, batch 25) and the grid's (10
replicas, batch 10 to 100), in each layout of the kernel: "rows" (one replica at a time, the
feature dimensions padded to 8 lanes: the kernel before the lanes layout), "lanes" (8 replicas
per vector, one per lane) and "auto" (what FusedMLPStep uses: groups of 8 in lanes, a
remainder of < 6 in rows).

Then the 110-replica training loop of the harness (`train_replicas`, 1 eval every 10 epochs)
with one 1-thread process, one 2-thread process, and two 1-thread worker processes.

Run: python benchmarks/step.py [--repeats 7] [--threads 1 2] [--replicas 1 10 110 1000]
     python benchmarks/step.py --only-peak   (just the throughput block)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import minitorch as mt

SIZES = (2, 25, 25, 25, 2)
STEPS, BATCH = 40, 25


def epoch_torch_nn():
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=False)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    crit = torch.nn.MSELoss()
    x, y = torch.rand(STEPS, BATCH, 2), torch.rand(STEPS, BATCH, 2)

    def run():
        with torch.enable_grad():
            for s in range(STEPS):
                opt.zero_grad()
                crit(model(x[s]), y[s]).backward()
                opt.step()

    return run


def epoch_minitorch(replicas: int | None, fused: bool, kernel: str = "auto"):
    gen = [mt.seeded_generator(s, "init") for s in range(replicas or 1)]
    model = mt.mlp(SIZES, ("tanh",) * 3, replicas=replicas, generator=gen if replicas else gen[0])
    loss = mt.MSE(replicas=replicas)
    opt = mt.SGD(model.params(), 0.01)
    lead = () if replicas is None else (replicas,)
    x = torch.rand(*lead, STEPS * BATCH, 2)  # each replica's rows in its (shuffled) order
    y = torch.rand(*lead, STEPS * BATCH, 2)
    fused_step = mt.FusedMLPStep(model, loss, opt, kernel=kernel)

    def run_fused():
        fused_step.epoch(x, y, BATCH)

    def run_modules():
        for s in range(0, STEPS * BATCH, BATCH):
            xb, yb = x[..., s : s + BATCH, :], y[..., s : s + BATCH, :]
            loss(model(xb), yb)
            opt.zero_grad()
            model.backward(loss.backward())
            opt.step()

    return run_fused if fused else run_modules


def median_ms(run, repeats: int, min_block_s: float = 0.2) -> float:
    """Median over `repeats` blocks of one epoch's time in ms; blocks last >= min_block_s."""
    run()  # warm-up: buffers, caches
    t = time.perf_counter()
    run()
    per = max(time.perf_counter() - t, 1e-6)
    n = max(1, int(min_block_s / per))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            run()
        times.append((time.perf_counter() - t) / n * 1e3)
    return statistics.median(times)


MACS = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:], strict=False))


def epoch_flop(replicas: int, rows: int = STEPS * BATCH) -> float:
    """Forward, weight gradients and input gradients: 3 products of 2 flop per multiply-add."""
    return 2 * 3 * MACS * rows * replicas


def sgemm_run(n: int = 2048):
    a, b = torch.rand(n, n), torch.rand(n, n)
    c = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=c), 2.0 * n**3


def native_run(replicas: int, batch: int, layout: str, threads: int, rows: int = STEPS * BATCH):
    """One epoch of the report's model on the native kernel in `layout`, shuffled as the harness
    does (each replica's rows through its own permutation)."""
    gen = [mt.seeded_generator(s, "init") for s in range(replicas)]
    model = mt.mlp(SIZES, ("tanh",) * 3, replicas=replicas, generator=gen)
    fused = mt.FusedMLPStep(
        model, mt.MSE(replicas=replicas), mt.SGD(model.params(), 0.01), kernel="native",
        threads=threads,
    )  # fmt: skip
    fused.native_layout = layout
    x, y = torch.rand(replicas, rows, 2), torch.rand(replicas, rows, 2)
    order = torch.stack([torch.randperm(rows) for _ in range(replicas)])
    return lambda: fused.epoch(x, y, batch, order=order), epoch_flop(replicas, rows)


def peak_block(threads_list: list[int], repeats: int, min_block_s: float = 0.2) -> None:
    """GFLOP/s of the native kernel's layouts and of torch's sgemm, interleaved, medians."""
    print("native kernel throughput vs torch sgemm (2048^3) on the same threads; "
          f"median of {repeats} interleaved rounds")  # fmt: skip
    for threads in threads_list:
        torch.set_num_threads(threads)
        variants = {"torch sgemm 2048^3 (peak)": sgemm_run()}
        for replicas, batch in ((110, 25), (10, 10), (10, 25), (10, 50), (10, 100)):
            for layout in ("rows", "lanes", "auto"):
                name = f"R={replicas} batch {batch}, {layout}"
                variants[name] = native_run(replicas, batch, layout, threads)
        reps = {}
        for name, (run, _) in variants.items():  # warm-up, and how many calls make a block
            torch.set_num_threads(threads if "sgemm" in name else 1)
            run()
            t = time.perf_counter()
            run()
            reps[name] = max(1, int(min_block_s / max(time.perf_counter() - t, 1e-6)))
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, (run, flop) in variants.items():
                # torch on one thread beside the kernel: its idle OpenMP threads would spin
                torch.set_num_threads(threads if "sgemm" in name else 1)
                t = time.perf_counter()
                for _ in range(reps[name]):
                    run()
                rates[name].append(flop * reps[name] / (time.perf_counter() - t) / 1e9)
        torch.set_num_threads(threads)
        peak = statistics.median(rates["torch sgemm 2048^3 (peak)"])
        best_peak = max(rates["torch sgemm 2048^3 (peak)"])
        # "best": the fastest round of each, against the fastest sgemm round; on a loaded
        # machine the least disturbed rounds say more about the code than the medians.
        print(f"threads={threads}")
        head = f"{'variant':<28}{'GFLOP/s':>9}{'of peak':>9}{'vs rows':>9}"
        print(f"  {head}{'best':>8}{'of peak':>9}")
        for name, values in rates.items():
            g, best = statistics.median(values), max(values)
            rows_name = name.replace("lanes", "rows").replace("auto", "rows")
            ratio = g / statistics.median(rates[rows_name]) if rows_name in rates else 1.0
            print(f"  {name:<28}{g:>9.1f}{100 * g / peak:>8.0f}%{ratio:>8.2f}x"
                  f"{best:>8.1f}{100 * best / best_peak:>8.0f}%")  # fmt: skip
        print()


def workers_block(repeats: int, epochs: int) -> None:
    """Throughput of the real loop: 1 process x 1 thread, 1 x 2 threads, 2 processes x 1."""
    from experiments.spec import TrainSpec
    from experiments.training import train_replicas

    variants = [
        ("1 process, 1 thread", 1, 1),
        ("1 process, 2 threads", 1, 2),
        ("2 workers, 1 thread each", 2, 1),
    ]
    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    for _ in range(repeats):  # interleaved, so that drifts of the machine hit all alike
        for name, workers, threads in variants:
            torch.set_num_threads(threads)
            t = time.perf_counter()
            spec = TrainSpec(epochs=epochs, eval_every=10, workers=workers, threads=threads)
            train_replicas(range(110), spec)
            times[name].append((time.perf_counter() - t) / epochs * 1e3)
    base = statistics.median(times[variants[0][0]])
    print(f"train_replicas, 110 replicas, {epochs} epochs, median of {repeats}")
    print(f"  {'variant':<28}{'ms/epoch':>10}{'throughput':>12}")
    for name, ms in ((k, statistics.median(v)) for k, v in times.items()):
        print(f"  {name:<28}{ms:>10.1f}{base / ms:>11.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 10, 110, 1000])
    ap.add_argument(
        "--workers-epochs",
        type=int,
        default=300,
        help="epochs per run of the workers block (fork and merge are fixed costs: fewer epochs "
        "understate the steady state); 0 skips the block",
    )
    ap.add_argument(
        "--only-peak", action="store_true", help="only the native kernel vs sgemm block"
    )
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if args.only_peak:
        peak_block(args.threads, args.repeats)
        return
    print(f"torch {torch.__version__}; epoch = {STEPS} steps x batch {BATCH}; model {SIZES} Tanh")
    print(f"median of {args.repeats} blocks; ms per epoch (per replica-epoch for R > 1 rows)\n")
    for threads in args.threads:
        torch.set_num_threads(threads)
        base = median_ms(epoch_torch_nn(), args.repeats)
        rows = [("torch.nn + autograd", base, 1)]
        rows.append(("minitorch modules", median_ms(epoch_minitorch(None, False), args.repeats), 1))
        rows.append(("minitorch fused", median_ms(epoch_minitorch(None, True), args.repeats), 1))
        ms = median_ms(epoch_minitorch(None, True, "torch"), args.repeats)
        rows.append(("  torch kernel", ms, 1))
        for r in args.replicas:
            ms = median_ms(epoch_minitorch(r, True), args.repeats)
            rows.append((f"minitorch fused R={r}", ms / r, r))
            if r == 110:  # the same model on the portable kernel
                ms = median_ms(epoch_minitorch(r, True, "torch"), args.repeats)
                rows.append(("  R=110, torch kernel", ms / r, r))
        print(f"threads={threads}")
        print(f"  {'variant':<26}{'ms/epoch':>10}{'x torch.nn':>12}{'speed-up':>10}")
        for name, ms, _ in rows:
            print(f"  {name:<26}{ms:>10.3f}{ms / base:>12.3f}{base / ms:>9.1f}x")
        print()
    peak_block(args.threads, args.repeats)
    if args.workers_epochs:
        workers_block(min(args.repeats, 3), args.workers_epochs)


if __name__ == "__main__":
    main()
