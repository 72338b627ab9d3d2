"""A daily retrain, cold against warm (`jobs/train.py --init-model`): iterations and time to the cold
fit's held-out quality, as separate cold `spark-submit` processes.

    python scripts/benchmark_warm_start.py --input ratings.csv [--kind explicit|implicit]
        [--new-fraction 0.05] [--rank 10] [--iterations 10] [--reg 0.1] [--alpha 1.0]
        [--master local[2]] [--driver-memory 8g] [--set section.key=value ...] [--json report.json]
        [--doc docs/performance.md [--label TITLE]]

"Next day" data: the input ordered by timestamp (read order without one); yesterday's data is all
but the newest ratings, today's is everything, `--new-fraction` more than yesterday's (5%: the
newest 1/21 of the rows). One test set for both days: 20% of today's ratings at random (seed 42);
training files are the rest, today's and yesterday's part of it. Runs:
  1. yesterday's model: the train job on yesterday's training part (its own part of the test set);
  2. today cold: the train job on today's training file, `--iterations`;
  3. today warm: the same with `--init-model` (1.), `--iterations`;
  4. today warm, stopped at the first iteration whose held-out metric (RMSE for explicit, NDCG@10
     for implicit, from metrics.json's history) is as good as the cold run's last one.
Printed: the cold run's final metric, each warm iteration's, the iterations the warm start needs,
and the whole-job wall time and fit seconds of 2, 3 and 4.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchmark_job import _standard, run_process, submit, update_doc


def next_day_files(path: str, folder: str, new_fraction: float, seed: int = 42) -> dict[str, str]:
    """yesterday's and today's training files and the shared test file (Parquet) under `folder`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = _standard(pq.read_table(path) if path.endswith(".parquet") or os.path.isdir(path) else pcsv.read_csv(path))
    n = table.num_rows
    order = (
        np.argsort(table.column("timestamp").to_numpy(), kind="stable")
        if "timestamp" in table.column_names
        else np.arange(n)
    )
    today_only = np.zeros(n, bool)
    today_only[order[int(round(n / (1 + new_fraction))) :]] = True
    test = np.random.default_rng(seed).random(n) < 0.2
    parts = {
        "yesterday_train": ~test & ~today_only,
        "yesterday_test": test & ~today_only,
        "today_train": ~test,
        "today_test": test,
    }
    out = {}
    for name, mask in parts.items():
        out[name] = os.path.join(folder, f"{name}.parquet")
        pq.write_table(table.filter(pa.array(mask)), out[name])
    return out


def train(args, train_file: str, test_file: str, out: str, env: dict, iterations: int, *extra: str) -> dict:
    sets = [
        f"model.kind={args.kind}",
        f"model.rank={args.rank}",
        f"model.iterations={iterations}",
        f"model.reg={args.reg}",
        f"model.alpha={args.alpha}",
        *args.set,
    ]
    cmd = submit(
        args,
        "jobs/train.py",
        ["--train", train_file, "--test", test_file, "--output", out, *extra, *[x for s in sets for x in ("--set", s)]],
    )
    r = run_process(cmd, env)
    if r["returncode"] != 0:
        raise SystemExit(f"the train job failed ({r['returncode']}):\n{r['stderr'][-4000:]}")
    with open(os.path.join(out, "metrics.json")) as fh:
        m = json.load(fh)
    return {
        "wall_seconds": r["wall_seconds"],
        "fit_seconds": round(m["fit_seconds"], 3),
        "iteration_seconds": round(sum(h["seconds"] for h in m["history"]), 3),
        "final": m["rmse"] if args.kind == "explicit" else m["ndcg_at_k"],
        "history": [h["test_rmse"] if args.kind == "explicit" else h["ndcg_at_k"] for h in m["history"]],
    }


def reached(history: list[float], target: float, explicit: bool) -> int | None:
    """The first iteration (1-based) whose metric is as good as `target`, or None."""
    for it, v in enumerate(history, 1):
        if v is not None and (v <= target if explicit else v >= target):
            return it
    return None


def markdown(report: dict, args) -> str:
    metric = "held-out RMSE" if args.kind == "explicit" else "NDCG@10 (sampled users per iteration)"
    c, w, s = report["cold"], report["warm"], report.get("warm_stopped")
    lines = [
        f"### {args.label}",
        "",
        f"`python scripts/benchmark_warm_start.py {' '.join(args.argv)}` ({args.master}, rank {args.rank}, "
        f"reg {args.reg}; yesterday = today minus its newest {args.new_fraction:.0%} more ratings)",
        "",
        "| iteration | " + " | ".join(str(i) for i in range(1, len(c["history"]) + 1)) + " |",
        "|---|" + "---|" * len(c["history"]),
        f"| cold, {metric} | " + " | ".join(f"{v:.4f}" for v in c["history"]) + " |",
        f"| warm, {metric} | " + " | ".join(f"{v:.4f}" for v in w["history"]) + " |",
        "",
        "| run | iterations | whole job, s | fit, s | of which iterations, s | final metric (all users) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (("cold", c), ("warm", w), ("warm, stopped at the cold quality", s)):
        if r is not None:
            lines.append(
                f"| {name} | {len(r['history'])} | {r['wall_seconds']:.1f} | {r['fit_seconds']:.2f} | "
                f"{r['iteration_seconds']:.2f} | {r['final']:.4f} |"
            )
    if s is None:
        lines.append("| warm never reached the cold run's last metric | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="ratings file (CSV with a header, or Parquet)")
    p.add_argument("--kind", default="explicit", choices=("explicit", "implicit"))
    p.add_argument("--new-fraction", type=float, default=0.05, help="today's new ratings, a fraction of yesterday's")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--set", action="append", default=[], help="config key for every run (section.key=value)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--doc", help="markdown file whose section --label this run replaces")
    p.add_argument("--label", default="warm start")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    explicit = args.kind == "explicit"
    with tempfile.TemporaryDirectory(prefix="mf_warm_") as folder:
        files = next_day_files(args.input, folder, args.new_fraction)
        model = os.path.join(folder, "yesterday")
        train(args, files["yesterday_train"], files["yesterday_test"], model, env, args.iterations)
        cold = train(
            args, files["today_train"], files["today_test"], os.path.join(folder, "cold"), env, args.iterations
        )
        warm = train(
            args,
            files["today_train"],
            files["today_test"],
            os.path.join(folder, "warm"),
            env,
            args.iterations,
            "--init-model",
            model,
        )
        # The cold run's last per-iteration metric: the same measure as the warm run's per iteration
        # (for implicit data NDCG@10 of eval.history_users sampled users; "final" is over all users).
        at = reached(warm["history"], cold["history"][-1], explicit)
        report = {"cold": cold, "warm": warm, "iterations_to_reach": at, "warm_stopped": None}
        if at is not None:
            report["warm_stopped"] = train(
                args,
                files["today_train"],
                files["today_test"],
                os.path.join(folder, "warm_stopped"),
                env,
                at,
                "--init-model",
                model,
            )
    for name in ("cold", "warm", "warm_stopped"):
        r = report[name]
        if r is not None:
            print(
                f"{name:>13}: whole job {r['wall_seconds']:.1f} s, fit {r['fit_seconds']:.2f} s (iterations "
                f"{r['iteration_seconds']:.2f} s), final {r['final']:.4f}, "
                f"per iteration {' '.join(f'{v:.4f}' for v in r['history'])}"
            )
    print(f"iterations the warm start needs to reach the cold fit's last {cold['history'][-1]:.4f}: {at}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    if args.doc:
        update_doc(args.doc, args.label, markdown(report, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
