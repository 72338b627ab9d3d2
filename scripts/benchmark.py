"""Spark MLlib's ALS and mf_spark on the same split, same rank / iterations / reg (/ alpha), one run.

    python scripts/benchmark.py [--input ratings.csv [--format auto] | --synthetic N_RATINGS]
        [--kind explicit|implicit] [--rank 10] [--iterations 10] [--reg 0.1] [--alpha 1.0]
        [--repeat 3] [--vary-seed] [--json report.json]
        explicit extras (ours only): [--biases] [--sweep-reg 0.05,0.1,0.2] [--sweep-rank 10,20]
        implicit extras: [--alphas 1,5,20 --regs 0.01,0.1] (grid, both models)
                         [--w0s 0.01,0.1] [--log-alphas 0.5,1] (ours only, at our best setting)

Without --input or --synthetic the MovieLens sample shipped with pyspark is used. --synthetic N
writes scripts/make_synthetic.py's generate(N, kind) (deterministic: same N, same rows) to a
temporary Parquet file. Both models fit the same training split in this process; with --repeat > 1
they alternate (MLlib, ours, MLlib, ours, ...) so drift in the machine's speed hits both. --warmup
(default 1) runs each model once, untimed, before: the first fit of a process pays for JIT
compilation (MLlib) and Python worker start-up and imports (ours), seconds that say nothing about
either algorithm. With --vary-seed, repeat r uses model seed --seed + r for both models (the split
stays the same): ALS after 10 iterations still depends on its random start (on the 1M synthetic
set, five seeds spread MLlib's held-out RMSE over 0.7824-0.7868), so one seed's quality is a sample
of one.

Measured for each model, per setting (median over repeats for times, maximum for memory):
  fit s        wall time of the fit, factors collected to the driver (ours: FitResult.fit_seconds)
  s/iter       fit s / iterations; for ours also the median time of one loop iteration (history)
  top-10 s     top 10 items for every user, forced by a "noop" write: MLlib
               model.recommendForAllUsers(10) (seen items NOT excluded), ours
               topn.recommendations(FactorModel, train, RecommendConfig(top_n=10, exclude_seen=True))
  quality      held-out RMSE (explicit; mf_spark.evaluate for both, clipped, cold = mean) or
               NDCG@10 (implicit; one evaluate.RankingEvaluator for both, training items excluded)
  memory       peak RSS during the fit, MB: driver Python (getrusage), Spark JVM (VmHWM) and the
               Python workers (VmHWM of every pyspark.daemon / worker process under the JVM, sampled
               every 0.2 s because workers may exit: sum and max); high-water marks are reset when
               the fit starts (see PeakMemory). MLlib uses no Python workers: idle ones left by
               earlier runs of ours still count, at their resident size
Then the ratios ours/MLlib and the quality difference, and a floating-point bound for one iteration
of ours (scripts/flops.py): its flop count over this machine's one-thread float32 matmul rate, on
one core and on the Spark cores the blocks run on, against the measured loop s/iter.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import flops
import numpy as np
from proctree import descendants

from mf_spark import evaluate
from mf_spark.als import loop as als
from mf_spark.core import config, session
from mf_spark.core.config import ModelConfig, RecommendConfig
from mf_spark.core.types import ITEM_IDX, RATING, USER_IDX, Factors
from mf_spark.data import index, prepare, read, ready
from mf_spark.model import topn
from mf_spark.model.factors import FactorModel, Scorer

TOP_N = 10
SAMPLE_SECONDS = 0.2


# ---- input ----------------------------------------------------------------------------------------
def temp_dir(prefix: str) -> str:
    """A temporary folder removed when the script exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def synthetic_input(n_ratings: int, kind: str) -> str:
    """make_synthetic.generate(n_ratings, kind) written to a temporary Parquet file; returns its path."""
    import pyarrow.parquet as pq
    from make_synthetic import generate

    path = os.path.join(temp_dir("mf_spark-bench-data-"), f"synthetic_{kind}_{n_ratings}.parquet")
    pq.write_table(generate(n_ratings, kind), path)
    return path


@dataclass
class Data:
    """The training split (indexed, cached), the held-out rows and what scoring needs."""

    train_idx: object
    heldout: ready.HeldOut
    users: index.IdMap
    items: index.IdMap
    stats: ready.TrainStats
    ranking: evaluate.RankingEvaluator | None  # implicit only


def load_data(spark, args) -> Data:
    """read -> validate -> split (test fraction 0.2) -> index by the pipeline's Spark front end, as
    jobs/train.py does on a cluster; ranking evaluator over all users with held-out items (implicit)."""
    sets = [f"model.kind={args.kind}", "data.front_end=spark", f"split.method={args.split}"]
    sets += ["split.test_fraction=0.2", f"split.seed={args.seed}"]
    front = prepare.front_end(spark, config.load(None, sets), input=args.input, fmt=args.format)
    front.load()
    got = front.split_index()
    train = ready.as_df(got.train)  # indexed: the DataFrame both models fit
    ranking = None
    if args.kind == "implicit":
        seen = topn.seen_lists(train)
        relevant = evaluate.relevant_items(got.heldout, None)
        ranking = evaluate.RankingEvaluator(seen, relevant, got.items.size, TOP_N)
    return Data(train, got.heldout, got.users, got.items, got.stats, ranking)


# ---- memory -----------------------------------------------------------------------------------------
def _status_kb(pid, key: str) -> int | None:
    """A field of /proc/PID/status in kB (VmHWM: peak resident set, VmRSS: current)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak(pid) -> bool:
    """Reset the kernel's VmHWM of PID to its current RSS (Linux: write 5 to /proc/PID/clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def python_workers(jvm_pid: int) -> list[int]:
    """PIDs of the pyspark.daemon / pyspark.worker processes descending from the JVM (from /proc)."""
    found = []
    for pid in descendants(jvm_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
            found.append(pid)
    return found


class PeakMemory:
    """Peak resident memory (MB) during a `with` block, of the driver's Python process
    (resource.getrusage ru_maxrss), the Spark JVM (VmHWM of the PID given by java's
    ProcessHandle.current()) and the Python workers (largest VmHWM seen per worker PID, sampled by a
    background thread every 0.2 s; reported as the sum over workers and the largest one).

    On entry the high-water marks of all of them are reset to the current RSS, so each fit is measured
    on its own (the start RSS is kept as *_start_mb); where the kernel refuses the reset,
    `reset` is False and the marks cover the processes' lifetimes so far.
    """

    def __init__(self, spark):
        self.jvm = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        self.workers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid in python_workers(self.jvm):
            kb = _status_kb(pid, "VmHWM")
            if kb is not None:
                self.workers[pid] = max(kb, self.workers.get(pid, 0))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        pids = ["self", self.jvm, *python_workers(self.jvm)]
        self.reset = all([_reset_peak(pid) for pid in pids])
        self.start = {
            "driver_python_start_mb": _status_kb("self", "VmRSS"),
            "driver_jvm_start_mb": _status_kb(self.jvm, "VmRSS"),
        }
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        mb = lambda kb: None if kb is None else round(kb / 1024.0, 1)
        jvm = _status_kb(self.jvm, "VmHWM")
        start = self.start["driver_jvm_start_mb"]
        self.peaks = {
            "driver_python_mb": mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            "driver_jvm_mb": mb(jvm),
            "driver_jvm_growth_mb": None if jvm is None or start is None else mb(jvm - start),
            "workers_sum_mb": mb(sum(self.workers.values())),
            "workers_max_mb": mb(max(self.workers.values(), default=0)),
            "n_workers": len(self.workers),
            "reset": self.reset,
            **{k: mb(v) for k, v in self.start.items()},
        }


# ---- the two models ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    rank: int
    iterations: int
    reg: float
    alpha: float | None  # None: explicit
    solver: str = "auto"  # ours: model.solver and model.cg_steps
    cg_steps: int = 3

    def model_config(self, seed: int, **extra) -> ModelConfig:
        kind = {} if self.alpha is None else {"kind": "implicit", "alpha": self.alpha}
        return ModelConfig(
            rank=self.rank,
            iterations=self.iterations,
            reg=self.reg,
            seed=seed,
            solver=self.solver,
            cg_steps=self.cg_steps,
            **kind,
            **extra,
        )


def mllib_factors(model, n, side):
    rows = (model.userFactors if side == "user" else model.itemFactors).toArrow()
    ids = rows.column("id").to_numpy()
    F = np.zeros((n, model.rank), dtype=np.float32)
    F[ids] = np.stack(rows.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return F


def fit_mllib(data: Data, s: Setting, seed: int):
    """pyspark.ml ALS (implicitPrefs with alpha when s.alpha is set) -> (seconds, Factors, model);
    the time includes collecting the factors to the driver."""
    from pyspark.ml.recommendation import ALS

    t0 = time.perf_counter()
    extra = {} if s.alpha is None else {"implicitPrefs": True, "alpha": s.alpha}
    model = ALS(
        rank=s.rank,
        maxIter=s.iterations,
        regParam=s.reg,
        userCol=USER_IDX,
        itemCol=ITEM_IDX,
        ratingCol=RATING,
        seed=seed,
        coldStartStrategy="nan",
        **extra,
    ).fit(data.train_idx)
    X = mllib_factors(model, data.users.size, "user")
    Y = mllib_factors(model, data.items.size, "item")
    return time.perf_counter() - t0, Factors(X, Y, None, None, 0.0), model


def release_mllib(spark) -> None:
    """Unpersist the factor RDDs MLlib's ALS leaves cached (named userFactors / itemFactors)."""
    for rdd in spark.sparkContext._jsc.getPersistentRDDs().values():
        if rdd.name() in ("userFactors", "itemFactors"):
            rdd.unpersist(False)


def factor_model(data: Data, kind: str, factors: Factors) -> FactorModel:
    rating_range = (data.stats.lo, data.stats.hi) if kind == "explicit" else None
    return FactorModel(kind, factors, data.users, data.items, data.stats.mean, rating_range, {})


def timed_write(df) -> float:
    """Seconds to compute every row of `df` (a "noop" write: nothing is stored)."""
    t0 = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t0


def quality(data: Data, kind: str, factors: Factors) -> dict:
    """Held-out rmse (explicit) or the ranking metrics at 10 (implicit), the same code for both models."""
    if kind == "explicit":
        scorer = Scorer("explicit", factors, data.stats.mean, (data.stats.lo, data.stats.hi))
        return {"rmse": evaluate.error_metrics(scorer, data.heldout)["rmse"]}
    m = data.ranking(Scorer("implicit", factors, 0.0, None))
    return {k: m[k] for k in evaluate.RANKING_KEYS}


def settle(spark) -> None:
    """A full JVM and Python garbage collection before a timed fit, so that neither model pays for
    collecting the other's garbage (measured: after an MLlib fit, our next 1M fit took 1.66 s
    against 1.09 s without MLlib in the process; the JVM's concurrent GC shares the two cores)."""
    import gc

    gc.collect()
    spark.sparkContext._jvm.java.lang.System.gc()
    time.sleep(0.5)


def run_mllib(spark, data: Data, s: Setting, seed: int) -> dict:
    """One MLlib run: fit (memory sampled), top-10 for all users, quality."""
    settle(spark)
    with PeakMemory(spark) as mem:
        seconds, factors, model = fit_mllib(data, s, seed)
    top = timed_write(model.recommendForAllUsers(TOP_N))
    release_mllib(spark)
    return {
        "fit_seconds": seconds,
        "seconds_per_iteration": seconds / s.iterations,
        "topn_seconds": top,
        **quality(data, "explicit" if s.alpha is None else "implicit", factors),
        "memory": mem.peaks,
    }


def run_ours(spark, data: Data, cfg: ModelConfig, with_topn: bool = True) -> dict:
    """One run of ours: als.fit (memory sampled), top-10 for all users (seen excluded), quality."""
    settle(spark)
    with PeakMemory(spark) as mem:
        res = als.fit(data.train_idx, data.users.size, data.items.size, cfg, stats=data.stats, user_ids=data.users.ids)
    out = {
        "fit_seconds": res.fit_seconds,
        "seconds_per_iteration": res.fit_seconds / cfg.iterations,
        "loop_seconds_per_iteration": statistics.median(h["seconds"] for h in res.history),
    }
    if with_topn:
        model = factor_model(data, cfg.kind, res.factors)
        out["topn_seconds"] = timed_write(topn.recommendations(model, data.train_idx, RecommendConfig(TOP_N, True)))
        if getattr(model, "_bc", None) is not None:
            model._bc.unpersist(blocking=False)
    return {**out, **quality(data, cfg.kind, res.factors), "memory": mem.peaks}


def _over_runs(values: list, how) -> object:
    """how(values) over the numbers among `values` (None when there are none); booleans: all()."""
    if values and all(isinstance(v, bool) for v in values):
        return all(values)
    numbers = [v for v in values if isinstance(v, (int, float))]
    return how(numbers) if numbers else None


def summarize(runs: list[dict]) -> dict:
    """Median of each timing and quality field over the repeats, maximum of each memory field."""
    out = {k: _over_runs([r[k] for r in runs], statistics.median) for k in runs[0] if k not in ("memory", "seed")}
    out["all_fit_seconds"] = [r["fit_seconds"] for r in runs]
    out["all_seeds"] = [r["seed"] for r in runs]
    for key in ("rmse", "ndcg_at_k"):
        if key in runs[0]:
            out[f"all_{key}"] = [r[key] for r in runs]
    out["memory"] = {k: _over_runs([r["memory"][k] for r in runs], max) for k in runs[0]["memory"]}
    return out


def run_seeds(args) -> list[int]:
    """The model seed of each repeat: --seed every time, or --seed, --seed + 1, ... with --vary-seed
    (both models get the same seeds; times are seed-independent, held-out quality is not)."""
    return [args.seed + (r if args.vary_seed else 0) for r in range(args.repeat)]


def compare(spark, data: Data, s: Setting, args) -> dict:
    """MLlib and ours at setting `s`, alternating over args.repeat; summaries, ratios, difference."""
    runs = {"mllib": [], "ours": []}
    for _ in range(args.warmup):  # untimed: JIT, Python worker start-up and imports, first shuffles
        if not args.skip_mllib:
            run_mllib(spark, data, s, args.seed)
        run_ours(spark, data, s.model_config(args.seed), with_topn=not args.skip_topn)
    for seed in run_seeds(args):
        if not args.skip_mllib:
            runs["mllib"].append({**run_mllib(spark, data, s, seed), "seed": seed})
        runs["ours"].append({**run_ours(spark, data, s.model_config(seed), with_topn=not args.skip_topn), "seed": seed})
    o = summarize(runs["ours"])
    m = summarize(runs["mllib"]) if runs["mllib"] else None
    metric = "rmse" if s.alpha is None else "ndcg_at_k"
    ratios = (
        {}
        if m is None
        else {k: o[k] / m[k] for k in ("fit_seconds", "seconds_per_iteration", "topn_seconds") if m.get(k) and o.get(k)}
    )
    diff = None if m is None or o[metric] is None or m[metric] is None else o[metric] - m[metric]
    return {
        "rank": s.rank,
        "iterations": s.iterations,
        "reg": s.reg,
        "alpha": s.alpha,
        "mllib": m,
        "ours": o,
        "ratios": ratios,
        "metric": metric,
        "metric_difference": diff,
    }


# ---- printing -------------------------------------------------------------------------------------
def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_comparison(c: dict, repeat: int) -> None:
    label = "RMSE" if c["metric"] == "rmse" else "NDCG@10"
    alpha = "" if c["alpha"] is None else f", alpha {c['alpha']}"
    print(
        f"\nrank {c['rank']}, {c['iterations']} iterations, reg {c['reg']}{alpha}; median of {repeat} "
        f"run(s); memory: peak RSS during the fit, MB (+JVM: growth over its RSS at the start of the fit)"
    )
    print(
        f"{'model':<7}{'fit s':>8}{'s/iter':>8}{'loop s/it':>10}{'top-10 s':>9}{label:>9}"
        f"{'drv py':>8}{'drv JVM':>8}{'(+JVM)':>8}{'wrk sum':>8}{'wrk max':>8}"
    )
    for name in [n for n in ("mllib", "ours") if c[n] is not None]:
        r, mem = c[name], c[name]["memory"]
        print(
            f"{name:<7}{r['fit_seconds']:>8.2f}{r['seconds_per_iteration']:>8.3f}"
            f"{fmt(r.get('loop_seconds_per_iteration'), '.3f'):>10}{fmt(r.get('topn_seconds'), '.2f'):>9}"
            f"{fmt(r[c['metric']], '.4f'):>9}{fmt(mem['driver_python_mb'], '.0f'):>8}"
            f"{fmt(mem['driver_jvm_mb'], '.0f'):>8}{fmt(mem['driver_jvm_growth_mb'], '+.0f'):>8}"
            f"{fmt(mem['workers_sum_mb'], '.0f'):>8}"
            f"{fmt(mem['workers_max_mb'], '.0f'):>8}"
        )
    if len(set(c["ours"]["all_seeds"])) > 1:
        for name in [n for n in ("mllib", "ours") if c[n] is not None]:
            print(
                f"{name} {label} by seed: "
                + ", ".join(
                    f"{seed}: {fmt(v, '.4f')}" for seed, v in zip(c[name]["all_seeds"], c[name][f"all_{c['metric']}"])
                )
            )
    q = c["ratios"]
    print(
        f"ours/MLlib: fit {fmt(q.get('fit_seconds'), '.3f')}, s/iter {fmt(q.get('seconds_per_iteration'), '.3f')}, "
        f"top-10 {fmt(q.get('topn_seconds'), '.3f')} (MLlib keeps seen items, ours excludes them); "
        f"{label} ours - MLlib: {fmt(c['metric_difference'], '+.4f')}"
    )


def print_extra(runs: list[dict], metric: str) -> None:
    label = "RMSE" if metric == "rmse" else "NDCG@10"
    print(f"\nextra runs of ours\n{'rank':>5}{'reg':>7}{label:>9}{'fit s':>8}  params")
    for r in runs:
        params = " ".join(f"{k}={r[k]}" for k in ("biases", "alpha", "w0", "confidence") if k in r)
        print(f"{r['rank']:>5}{r['reg']:>7}{fmt(r.get(metric), '.4f'):>9}{r['fit_seconds']:>8.2f}  {params}")


# ---- flop bound -----------------------------------------------------------------------------------
def flop_bound(spark, data: Data, s: Setting, measured: float, size: int) -> dict:
    """Flops of one iteration of ours (scripts/flops.py) over the one-thread numpy float32 matmul
    rate of this machine: the bound on one core and on the cores the blocks run on (Spark's default
    parallelism, which is also the default number of blocks), and measured / bound."""
    count = flops.iteration_flops(data.stats.n, data.users.size, data.items.size, s.rank, False, s.alpha is not None)
    cores = spark.sparkContext.defaultParallelism
    try:
        rate = flops.measure_gflops(size, threads=1)
    except Exception as exc:  # report the count without the rate
        print(f"\nfloating-point bound: measuring the matmul rate failed ({type(exc).__name__}: {exc})")
        return {"flops": count, "cores": cores}
    one, par = flops.bound_seconds(count["total"], rate), flops.bound_seconds(count["total"], rate, cores)
    print(
        f"\nfloating-point bound, one iteration of ours: Gramians {count['gramians']:.3g} + solves "
        f"{count['solves']:.3g} + fixed Gramians {count['fixed_gramian']:.3g} = {count['total']:.3g} flops"
    )
    print(
        f"numpy float32 matmul {size}x{size}, 1 thread: {rate:.1f} GFLOP/s -> bound {one:.4g} s on 1 core, "
        f"{par:.4g} s on {cores} Spark core(s); measured {measured:.4g} s/iteration (loop) = "
        f"{measured / par:.1f} x the {cores}-core bound"
    )
    out = {
        "flops": count,
        "gflops_one_thread": rate,
        "matmul_size": size,
        "cores": cores,
        "bound_seconds_one_core": one,
        "bound_seconds": par,
        "measured_seconds_per_iteration": measured,
        "measured_over_bound": measured / par,
    }
    steps = s.model_config(0).cg_steps_for()
    if steps:  # the bound above is that of exact solves; this solver does less arithmetic
        cg = flops.cg_iteration_flops(
            data.stats.n, data.users.size, data.items.size, s.rank, steps, False, s.alpha is not None
        )
        cg_par = flops.bound_seconds(cg, rate, cores)
        print(
            f"ours solved by {steps} conjugate-gradient steps per row (model.solver): {cg:.3g} flops per "
            f"iteration, bound {cg_par:.4g} s on {cores} core(s); measured = {measured / cg_par:.1f} x that "
            f"bound, {measured / par:.2f} x the exact-solve bound above"
        )
        out.update(
            {"cg_steps": steps, "cg_flops": cg, "cg_bound_seconds": cg_par, "measured_over_cg_bound": measured / cg_par}
        )
    return out


# ---- extras and main ------------------------------------------------------------------------------
def floats(text):
    return [float(x) for x in text.split(",") if x]


def settings(args) -> list[Setting]:
    """Explicit: one setting. Implicit: the --alphas x --regs grid, each defaulting to --alpha / --reg."""
    if args.kind == "explicit":
        return [Setting(args.rank, args.iterations, args.reg, None, args.solver, args.cg_steps)]
    return [
        Setting(args.rank, args.iterations, reg, alpha, args.solver, args.cg_steps)
        for alpha in floats(args.alphas) or [args.alpha]
        for reg in floats(args.regs) or [args.reg]
    ]


def extra_configs(args, best: dict) -> list[tuple[dict, ModelConfig]]:
    """Ours-only runs: explicit --biases / --sweep-rank x --sweep-reg (biases on); implicit --w0s
    (linear) and --log-alphas (log confidence) at our best (alpha, reg)."""
    out = []
    base = {"iterations": args.iterations, "seed": args.seed}
    if args.kind == "explicit":
        grid = [(args.rank, args.reg)] if args.biases else []
        grid += [
            (int(r), reg)
            for r in (args.sweep_rank.split(",") if args.sweep_rank else [args.rank])
            if r
            for reg in floats(args.sweep_reg)
        ]
        for rank, reg in grid:
            out.append(
                ({"rank": rank, "reg": reg, "biases": True}, ModelConfig(rank=rank, reg=reg, biases=True, **base))
            )
        return out
    imp = {"kind": "implicit", "rank": args.rank, "reg": best["reg"], **base}
    for w0 in floats(args.w0s):
        out.append(
            (
                {"rank": args.rank, "reg": best["reg"], "alpha": best["alpha"], "w0": w0, "confidence": "linear"},
                ModelConfig(alpha=best["alpha"], unobserved_weight=w0, **imp),
            )
        )
    for alpha in floats(args.log_alphas):
        out.append(
            (
                {"rank": args.rank, "reg": best["reg"], "alpha": alpha, "w0": 1.0, "confidence": "log"},
                ModelConfig(alpha=alpha, confidence="log", **imp),
            )
        )
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", default=None, help="ratings (default: the sample shipped with pyspark)")
    src.add_argument(
        "--synthetic",
        type=int,
        default=None,
        metavar="N_RATINGS",
        help="generate N ratings with scripts/make_synthetic.py (deterministic)",
    )
    p.add_argument("--format", default="auto", help="input format: auto, csv, tsv, movielens, parquet")
    p.add_argument("--kind", default="explicit", choices=["explicit", "implicit"])
    p.add_argument("--split", default="random", choices=["random", "per_user", "temporal"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=1.0, help="implicit: confidence slope (both models)")
    p.add_argument("--solver", default="auto", choices=["auto", "exact", "cg"], help="ours: model.solver")
    p.add_argument("--cg-steps", type=int, default=3, help="ours: model.cg_steps")
    p.add_argument("--repeat", type=int, default=1, help="runs of each model, alternating; medians reported")
    p.add_argument(
        "--vary-seed",
        action="store_true",
        help="repeat r fits both models with model seed --seed + r: the quality reported is then "
        "the median over starts, not one random start's",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first (0 = time cold runs)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--skip-mllib", action="store_true", help="fit ours only (sizes where MLlib is not the point)")
    p.add_argument("--skip-topn", action="store_true", help="do not time top-N")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the timed float32 matmul")
    p.add_argument("--biases", action="store_true", help="explicit: also fit ours with biases")
    p.add_argument("--sweep-reg", default="", help="explicit: comma-separated regs for extra runs of ours (biases on)")
    p.add_argument("--sweep-rank", default="", help="explicit: comma-separated ranks for the sweep")
    p.add_argument("--alphas", default="", help="implicit: alpha grid for both models (default: --alpha)")
    p.add_argument("--regs", default="", help="implicit: reg grid for both models (default: --reg)")
    p.add_argument("--w0s", default="", help="implicit: extra w0 runs of ours at our best alpha/reg")
    p.add_argument("--log-alphas", default="", help="implicit: extra log-confidence runs of ours")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def best_settings(comparisons: list[dict]) -> tuple[dict, dict]:
    """The comparisons where ours and where MLlib score best (highest NDCG, lowest RMSE); printed
    when there is a grid."""
    metric = comparisons[0]["metric"]
    sign = 1 if metric == "ndcg_at_k" else -1
    best = max(comparisons, key=lambda c: sign * (c["ours"][metric] or 0.0))
    best_mllib = max(comparisons, key=lambda c: sign * ((c["mllib"] or {}).get(metric) or 0.0))
    if len(comparisons) > 1 and best_mllib["mllib"] is not None:
        print(
            f"\nbest MLlib: alpha={best_mllib['alpha']} reg={best_mllib['reg']} {metric}="
            f"{fmt(best_mllib['mllib'][metric], '.4f')}; best ours: alpha={best['alpha']} reg={best['reg']} "
            f"{metric}={fmt(best['ours'][metric], '.4f')}"
        )
    return best, best_mllib


def report(args, data: Data, comparisons: list[dict], extra: list[dict], bound: dict) -> dict:
    """The JSON report: inputs, every comparison (summaries per model), extra runs, the flop bound,
    a flat list of runs and the headline ratio and metric difference (first setting)."""
    metric = comparisons[0]["metric"]
    runs = [
        {"model": name, "rank": c["rank"], "reg": c["reg"], "alpha": c["alpha"], **c[name]}
        for c in comparisons
        for name in ("mllib", "ours")
        if c[name] is not None
    ]
    return {
        "input": args.input,
        "kind": args.kind,
        "n_train": data.stats.n,
        "n_test": data.heldout.n,
        "n_users": data.users.size,
        "n_items": data.items.size,
        "rank": args.rank,
        "iterations": args.iterations,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "comparisons": comparisons,
        "extra_runs": extra,
        "flop_bound": bound,
        "runs": runs + [{"model": "ours", **r} for r in extra],
        "ratio_fit_seconds": comparisons[0]["ratios"].get("fit_seconds"),
        f"{metric}_difference": comparisons[0]["metric_difference"],
    }


def start(args):
    """The input path (synthetic data written first) and the Spark session."""
    if args.synthetic is not None:
        args.input = synthetic_input(args.synthetic, args.kind)
        args.format = "parquet" if args.format == "auto" else args.format
    args.input = args.input or read.sample_path()
    spark = session.start("mf_spark-benchmark", {"spark.ui.enabled": "false"})
    # MLlib's ALS truncates its lineage every checkpointInterval (10) iterations only when a checkpoint
    # folder is set; without one, long or repeated fits die with StackOverflowError.
    spark.sparkContext.setCheckpointDir(temp_dir("mf_spark-bench-ckpt-"))
    return spark


def main(argv=None) -> int:
    args = parse_args(argv)
    spark = start(args)
    data = load_data(spark, args)
    print(
        f"data: {args.input}: {data.stats.n} train / {data.heldout.n} test ratings, "
        f"{data.users.size} users x {data.items.size} items; {args.kind}; "
        f"Spark cores {spark.sparkContext.defaultParallelism}"
    )
    comparisons = []
    for s in settings(args):
        comparisons.append(compare(spark, data, s, args))
        print_comparison(comparisons[-1], args.repeat)
    best, _ = best_settings(comparisons)
    extra = [{**params, **run_ours(spark, data, cfg, with_topn=False)} for params, cfg in extra_configs(args, best)]
    if extra:
        print_extra(extra, best["metric"])
    setting = settings(args)[comparisons.index(best)]
    bound = flop_bound(spark, data, setting, best["ours"]["loop_seconds_per_iteration"], args.matmul_size)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report(args, data, comparisons, extra, bound), fh, indent=2, default=str)
    if data.ranking is not None:
        data.ranking.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
