"""Whole training jobs, ours against MLlib's, as users run them: separate cold `spark-submit` processes.

    python scripts/benchmark_job.py (--train T.parquet --test V.parquet | --input ratings.csv | --synthetic N)
        [--kind explicit|implicit] [--rank 10] [--iterations 10] [--reg 0.1] [--alpha 1.0]
        [--pairs 3] [--master local[2] | --cluster [--worker-memory 2g]] [--floor] [--driver-memory 8g]
        [--set section.key=value ...] [--json report.json] [--doc docs/performance.md [--label TITLE]]

Each pair runs `jobs/train.py` and `scripts/mllib_job.py` (the job an MLlib user writes: read Parquet,
ALS.fit, transform + RegressionEvaluator, recommendForAllUsers(10) with NDCG@10, both factor tables
and the exploded top-10 written) on the same train/test files, alternating which goes first, so drift
in the machine's speed hits both. For each run: the whole process's wall time (spark-submit start to
exit), its peak memory (the largest sum of resident memory over the process tree: launcher, JVM,
Python driver and workers, sampled every 0.2 s) and the job's own phase times (ours from
metrics.json's "timings" and "spark_jobs"). Printed: every run, the medians, the phase table and the
ratio ours/MLlib of the median wall times; --json writes all of it, --doc replaces this run's
section (by --label) of a markdown file such as docs/performance.md.

--remote URL runs every job as a Spark Connect client of that server (SPARK_REMOTE=URL, the scripts
run by Python, not spark-submit; `local[2]` starts a server in each client process, which is then
the whole job), for the figures on a Connect session beside a classic one.

--cluster starts a standalone cluster on this machine for the run (a master and two workers of one
core on 127.0.0.1, scripts/standalone.py) and submits every job to it, ours with the package shipped
as --py-files dist/mf_spark.zip, as a user submits it. --floor adds scripts/floor_job.py to every
round (ours, MLlib, floor, in turn): a job with no model that reads and counts the inputs and writes
outputs of our size. Its median is the least any Spark job costs there; the report gives each job's
time above it and the ratio of those, ours over MLlib's.

--input splits a ratings file (CSV with a header, or Parquet; columns found by name as in
jobs/train.py) 80/20 at random (seed 42) into temporary Parquet files; --synthetic N does the same
with scripts/make_synthetic.py's data (deterministic). --set passes config keys to our job only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import standalone
from proctree import descendants

SAMPLE_SECONDS = 0.2
NAMES = {
    "user": ("user", "userid", "user_id"),
    "item": ("item", "itemid", "item_id", "movieid"),
    "rating": ("rating", "score", "count", "value"),
    "timestamp": ("timestamp", "ts", "time"),
}


# ---- inputs ------------------------------------------------------------------------------------------
def _standard(table):
    """user, item, rating[, timestamp] columns of a table whose columns have the usual names."""
    import pyarrow as pa

    found = {}
    for want, names in NAMES.items():
        hit = next((c for c in table.column_names if c.lower().replace("-", "_") in names), None)
        if hit is None and want != "timestamp":
            raise SystemExit(f"benchmark_job: no {want} column among {table.column_names}")
        if hit is not None:
            found[want] = table.column(hit)
    found["rating"] = found["rating"].cast(pa.float64())
    return pa.table(found)


def split_files(table, folder: str, seed: int = 42) -> tuple[str, str]:
    """80/20 random split of `table` into folder/train.parquet and folder/test.parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    test = np.random.default_rng(seed).random(table.num_rows) < 0.2
    paths = os.path.join(folder, "train.parquet"), os.path.join(folder, "test.parquet")
    pq.write_table(table.filter(pa.array(~test)), paths[0])
    pq.write_table(table.filter(pa.array(test)), paths[1])
    return paths


def inputs(args, folder: str) -> tuple[str, str]:
    if args.train:
        return args.train, args.test
    if args.synthetic:
        from make_synthetic import generate

        return split_files(generate(args.synthetic, args.kind), folder)
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pq.read_table(args.input) if args.input.endswith(".parquet") else pcsv.read_csv(args.input)
    return split_files(_standard(table), folder)


# ---- one process ---------------------------------------------------------------------------------------
def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total / 1024.0


def run_process(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; wall seconds, peak tree memory (MB), exit code, output."""
    peak = [0.0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], _rss_mb([proc.pid, *descendants(proc.pid)]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    return {
        "wall_seconds": round(wall, 3),
        "peak_mb": round(peak[0], 1),
        "returncode": proc.returncode,
        "stdout": out,
        "stderr": err,
    }


def submit(args, script: str, job_args: list[str], package: bool = False) -> list[str]:
    """spark-submit of `script`; on a cluster with the executors' memory, and with `package` the
    mf_spark package shipped to them. With --remote, `script` run by Python as a Spark Connect
    client (its environment names the server: SPARK_REMOTE)."""
    if getattr(args, "remote", None):
        return [sys.executable, os.path.join(ROOT, script), *job_args]
    on_cluster = getattr(args, "cluster", False)  # benchmark_tuning.py submits with its own arguments
    cluster = [] if not on_cluster else ["--conf", f"spark.executor.memory={args.executor_memory}"]
    if on_cluster and package:
        cluster += ["--py-files", os.path.join(ROOT, "dist", "mf_spark.zip")]
    return [
        os.path.join(os.path.dirname(sys.executable), "spark-submit"),
        "--master",
        args.master,
        "--driver-memory",
        args.driver_memory,
        *cluster,
        os.path.join(ROOT, script),
        *job_args,
    ]


def submitted(args, env: dict):
    """A runner of jobs as separate processes (spark-submit, as users run them): `run(script, job_args)`
    gives run_process's report. Scripts take another runner for their tests (the jobs in-process)."""

    def run(script: str, job_args: list[str]) -> dict:
        return run_process(submit(args, script, job_args, package=True), env)

    return run


def run_ours(args, train: str, test: str, out: str, env: dict) -> dict:
    sets = [
        f"model.kind={args.kind}",
        f"model.rank={args.rank}",
        f"model.iterations={args.iterations}",
        f"model.reg={args.reg}",
        f"model.seed={args.seed}",
    ]
    if args.kind == "implicit":
        sets.append(f"model.alpha={args.alpha}")
    cmd = submit(
        args,
        "jobs/train.py",
        ["--train", train, "--test", test, "--output", out, *[x for s in sets + args.set for x in ("--set", s)]],
        package=True,
    )
    r = run_process(cmd, env)
    if r["returncode"] != 0:
        raise SystemExit(f"our job failed ({r['returncode']}):\n{r['stderr'][-4000:]}")
    with open(os.path.join(out, "metrics.json")) as fh:
        m = json.load(fh)
    timings = m.get("timings", {})
    # Session started -> first iteration: the phases before the fit plus the fit's start-up (its
    # stage started and its blocks built); older metrics lack the latter: the fit outside its loop.
    before_fit = sum(v for k, v in timings.items() if k in ("read_validate", "split_index", "evaluation_setup"))
    loop = sum(h["seconds"] for h in m.get("history", []))
    return {
        **_public(r),
        "timings": timings,
        "spark_jobs": m.get("spark_jobs"),
        "rmse": m["rmse"],
        "ndcg_at_k": m["ndcg_at_k"],
        "exchange": m.get("exchange"),
        "front_end": m.get("front_end"),
        "to_first_iteration": round(before_fit + m.get("fit_startup_seconds", m["fit_seconds"] - loop), 3),
    }


def run_mllib(args, train: str, test: str, out: str, env: dict) -> dict:
    job = [
        "--train",
        train,
        "--test",
        test,
        "--output",
        out,
        "--kind",
        args.kind,
        "--rank",
        str(args.rank),
        "--iterations",
        str(args.iterations),
        "--reg",
        str(args.reg),
        "--alpha",
        str(args.alpha),
        "--seed",
        str(args.seed),
    ]
    return run_json_job(args, "scripts/mllib_job.py", job, "the MLlib job", env)


def run_json_job(args, script: str, job: list[str], what: str, env: dict) -> dict:
    """Run a job that prints its report as its last JSON line: wall time, peak memory and that report."""
    r = run_process(submit(args, script, job), env)
    if r["returncode"] != 0:
        raise SystemExit(f"{what} failed ({r['returncode']}):\n{r['stderr'][-4000:]}")
    line = next(ln for ln in reversed(r["stdout"].splitlines()) if ln.startswith("{"))
    return {**_public(r), **json.loads(line)}


def run_floor(args, train: str, test: str, out: str, env: dict) -> dict:
    job = ["--train", train, "--test", test, "--output", out, "--rank", str(args.rank)]
    return run_json_job(args, "scripts/floor_job.py", job, "the floor job", env)


def _public(r: dict) -> dict:
    return {k: r[k] for k in ("wall_seconds", "peak_mb")}


# ---- report --------------------------------------------------------------------------------------------
def median_phases(runs: list[dict]) -> dict:
    names = list(dict.fromkeys(k for r in runs for k in r["timings"]))
    return {k: round(statistics.median(r["timings"].get(k, 0.0) for r in runs), 3) for k in names}


def summarize(ours: list[dict], mllib: list[dict], floor: list[dict] | None = None) -> dict:
    med = lambda runs, key: statistics.median(r[key] for r in runs)
    out = {
        "ours": {
            "wall_seconds": med(ours, "wall_seconds"),
            "peak_mb": max(r["peak_mb"] for r in ours),
            "phases": median_phases(ours),
            "rmse": ours[-1]["rmse"],
            "ndcg_at_k": ours[-1]["ndcg_at_k"],
            "front_end": ours[-1].get("front_end"),
        },
        "mllib": {
            "wall_seconds": med(mllib, "wall_seconds"),
            "peak_mb": max(r["peak_mb"] for r in mllib),
            "phases": median_phases(mllib),
            "rmse": mllib[-1]["rmse"],
            "ndcg_at_k": mllib[-1]["ndcg_at_k"],
        },
    }
    if all("to_first_iteration" in r for r in ours):
        out["ours"]["to_first_iteration"] = med(ours, "to_first_iteration")
    out["ratio_wall"] = round(out["ours"]["wall_seconds"] / out["mllib"]["wall_seconds"], 3)
    if floor:
        base = med(floor, "wall_seconds")
        above = {who: out[who]["wall_seconds"] - base for who in ("ours", "mllib")}
        out["floor"] = {
            "wall_seconds": base,
            "peak_mb": max(r["peak_mb"] for r in floor),
            "phases": median_phases(floor),
        }
        out["ours"]["above_floor_seconds"], out["mllib"]["above_floor_seconds"] = above["ours"], above["mllib"]
        out["ratio_above_floor"] = round(above["ours"] / above["mllib"], 3) if above["mllib"] > 0 else None
    out["ratio_peak_mb"] = round(out["ours"]["peak_mb"] / max(out["mllib"]["peak_mb"], 1e-9), 3)
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def print_report(summary: dict, ours: list[dict], mllib: list[dict]) -> None:
    for i, (a, b) in enumerate(zip(ours, mllib), 1):
        print(
            f"pair {i}: ours {a['wall_seconds']:.1f} s ({a['peak_mb']:.0f} MB)   "
            f"mllib {b['wall_seconds']:.1f} s ({b['peak_mb']:.0f} MB)   "
            f"ratio {a['wall_seconds'] / b['wall_seconds']:.2f}"
        )
    o, m = summary["ours"], summary["mllib"]
    print(
        f"\nmedian whole job: ours {o['wall_seconds']:.1f} s, MLlib {m['wall_seconds']:.1f} s, "
        f"ours/MLlib {summary['ratio_wall']:.2f}; peak memory ours {o['peak_mb']:.0f} MB, MLlib {m['peak_mb']:.0f} MB"
    )
    print(
        f"quality: RMSE ours {_fmt(o['rmse'])} MLlib {_fmt(m['rmse'])}; NDCG@10 ours {_fmt(o['ndcg_at_k'])} "
        f"MLlib {_fmt(m['ndcg_at_k'])} (MLlib's lists include items the user trained on)"
    )
    if "floor" in summary:
        f = summary["floor"]
        print(
            f"floor job (no model) {f['wall_seconds']:.1f} s: above it ours {o['above_floor_seconds']:.1f} s, "
            f"MLlib {m['above_floor_seconds']:.1f} s, ours/MLlib above the floor {summary['ratio_above_floor']}"
        )
    if "to_first_iteration" in o:
        print(f"ours, session started -> first iteration: {o['to_first_iteration']:.1f} s")
    jobs = ours[-1].get("spark_jobs") or {}
    print("\nour phases (median s, Spark jobs of the last run):")
    for k, v in o["phases"].items():
        print(f"  {k:18s} {v:8.2f}  {jobs.get(k, '')}")
    print("MLlib job phases (median s):")
    for k, v in m["phases"].items():
        print(f"  {k:18s} {v:8.2f}")


def markdown(summary: dict, ours: list[dict], args) -> str:
    """The report as a markdown section: the whole-job ratio, then the phase table."""
    o, m = summary["ours"], summary["mllib"]
    jobs = ours[-1].get("spark_jobs") or {}
    lines = [
        f"### {args.label}",
        "",
        f"`python scripts/benchmark_job.py {' '.join(args.argv)}` ({len(ours)} alternating pairs, medians; "
        f"{_where(args)}, driver memory {args.driver_memory}, rank {args.rank}, {args.iterations} iterations, "
        f"reg {args.reg}{f', alpha {args.alpha}' if args.kind == 'implicit' else ''})",
        "",
        "| | ours | MLlib |",
        "|---|---|---|",
        f"| whole job, s | {o['wall_seconds']:.1f} | {m['wall_seconds']:.1f} |",
        f"| ours / MLlib | **{summary['ratio_wall']:.2f}** | |",
        *(
            [
                f"| floor job (no model), s | {summary['floor']['wall_seconds']:.1f} | |",
                f"| above the floor, s | {o['above_floor_seconds']:.1f} | {m['above_floor_seconds']:.1f} |",
                f"| ours / MLlib above the floor | **{summary['ratio_above_floor']}** | |",
            ]
            if "floor" in summary
            else []
        ),
        f"| peak memory, MB | {o['peak_mb']:.0f} | {m['peak_mb']:.0f} |",
        *(
            [f"| session started -> first iteration, s | {o['to_first_iteration']:.1f} | |"]
            if "to_first_iteration" in o
            else []
        ),
        *([f"| front end (data.front_end) | {o['front_end']} | |"] if o.get("front_end") else []),
        f"| RMSE | {_fmt(o['rmse'])} | {_fmt(m['rmse'])} |",
        f"| NDCG@10 | {_fmt(o['ndcg_at_k'])} | {_fmt(m['ndcg_at_k'])} (seen items not excluded) |",
        "",
        "| our phase | s | Spark jobs |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} | {jobs.get(k, '')} |" for k, v in o["phases"].items()]
    lines += ["", "| MLlib job phase | s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in m["phases"].items()]
    return "\n".join(lines) + "\n"


def _where(args) -> str:
    if getattr(args, "remote", None):
        return f"a Spark Connect session on {args.remote} (SPARK_REMOTE), clients run by python"
    if not getattr(args, "cluster", False):
        return args.master
    return (
        f"a standalone cluster of 2 workers x 1 core, {args.worker_memory} each, executor memory {args.executor_memory}"
    )


def update_doc(path: str, label: str, section: str) -> None:
    """Replace the section tagged `label` in the markdown file `path` (appended when new)."""
    start, end = f"<!-- benchmark_job: {label} -->", f"<!-- /benchmark_job: {label} -->"
    text = open(path).read() if os.path.exists(path) else "# Performance\n\n"
    block = f"{start}\n{section}{end}\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as fh:
        fh.write(text)


def rounds(args, train: str, test: str, work: str, env: dict) -> dict[str, list[dict]]:
    """args.pairs rounds of our job and MLlib's, alternating which goes first, each round ending with
    the floor job under --floor."""
    jobs = {"ours": run_ours, "mllib": run_mllib, "floor": run_floor}
    runs: dict[str, list[dict]] = {"ours": [], "mllib": [], "floor": []}
    for i in range(args.pairs):
        order = ("ours", "mllib") if i % 2 == 0 else ("mllib", "ours")
        for who in order + (("floor",) if args.floor else ()):
            out = os.path.join(work, f"{who}-{i}")
            result = jobs[who](args, train, test, out, env)
            runs[who].append(result)
            print(f"{who} run {i + 1}: {result['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return runs


def _from_json(path: str, doc: str | None, label: str | None) -> int:
    """--doc's section (titled `label`, else the run's) from a saved report (a run made elsewhere,
    e.g. from another checkout)."""
    with open(path) as fh:
        report = json.load(fh)
    args = argparse.Namespace(**report["settings"])
    args.label = label or args.label
    print_report(report["summary"], report["ours"], report["mllib"])
    if doc:
        update_doc(doc, args.label, markdown(report["summary"], report["ours"], args))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train")
    src.add_argument("--input")
    src.add_argument("--synthetic", type=int)
    src.add_argument("--from-json", help="no run: write --doc's section from a report --json wrote")
    p.add_argument("--test")
    p.add_argument("--kind", choices=("explicit", "implicit"), default="explicit")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--cluster", action="store_true", help="start a standalone cluster (2 workers x 1 core) for the run")
    p.add_argument("--worker-memory", default="2g", help="--cluster: each worker's memory")
    p.add_argument("--executor-memory", default="1500m", help="--cluster: each executor's memory")
    p.add_argument("--floor", action="store_true", help="run the floor job (no model) in every round")
    p.add_argument("--remote", help="run every job as a Spark Connect client of this server (SPARK_REMOTE)")
    p.add_argument("--set", action="append", default=[], help="config key for our job, repeatable")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--doc", help="markdown file whose section --label this run replaces (docs/performance.md)")
    p.add_argument("--label", help="the section's title (default: the input and kind)")
    args = p.parse_args(argv)
    if args.from_json:
        return _from_json(args.from_json, args.doc, args.label)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    source = os.path.basename(args.train or args.input or "") or f"synthetic {args.synthetic:,} ratings"
    args.label = args.label or f"{source}, {args.kind}"
    if bool(args.train) != bool(args.test):
        p.error("--train and --test go together")
    work = tempfile.mkdtemp(prefix="mf_spark-benchjob-")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    if args.remote:
        env["SPARK_REMOTE"] = args.remote
    else:
        env.pop("SPARK_REMOTE", None)
    try:
        train, test = inputs(args, work)
        with contextlib.ExitStack() as stack:
            if args.cluster:
                package = subprocess.run(["bash", os.path.join(ROOT, "scripts", "package.sh")], capture_output=True)
                if package.returncode != 0:
                    raise SystemExit(f"scripts/package.sh failed:\n{package.stderr.decode()[-2000:]}")
                where = os.path.join(work, "cluster")
                args.master = stack.enter_context(
                    standalone.cluster(2, 1, args.worker_memory, where, sys.executable)
                ).master
            runs = rounds(args, train, test, work, env)
        ours, mllib, floor = runs["ours"], runs["mllib"], runs["floor"]
        summary = summarize(ours, mllib, floor)
        print_report(summary, ours, mllib)
        if args.doc:
            update_doc(args.doc, args.label, markdown(summary, ours, args))
        if args.json:
            report = {
                "settings": {k: v for k, v in vars(args).items() if k != "json"},
                "summary": summary,
                "ours": ours,
                "mllib": mllib,
                "floor": floor,
            }
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
