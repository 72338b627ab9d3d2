"""Held-out quality of jobs/tune.py's choice against the shipped defaults, on several data sets, as
separate cold `spark-submit` processes.

    python scripts/benchmark_tuning.py [--movielens ratings.csv] [--synthetic 300000]
        [--kind both|explicit|implicit] [--master local[2]] [--driver-memory 8g] [--set section.key=value ...]
        [--json report.json]
        [--split-seed 42] [--doc docs/quality.md]

Data sets: the MovieLens file as explicit ratings and as implicit feedback, and a synthetic explicit
and a synthetic implicit set (scripts/make_synthetic.py, --synthetic ratings each). Each is split once
80/20 at random (seed 42) into train and test files; on them run
  1. the train job with the defaults (conf/default.toml; conf/implicit.toml for implicit data);
  2. explicit data: the train job with conf/explicit.toml;
  3. the tune job with its default search, the config of 1. otherwise (`--set`s go to all).
The tune job chooses on a validation split of the training file and reads the test file only to
score its refit, so both test figures are honest. Printed per data set: the test metric (RMSE for
explicit, NDCG@10 for implicit) of each, the tune job's pick and validation metric, and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchmark_job import ROOT, _standard, run_process, split_files, submitted, update_doc


def _job(args, run, script: str, train: str, test: str, out: str, config: str | None) -> dict:
    """`script` run by `run` (benchmark_job.submitted's kind of runner) on the split; its metrics.json."""
    extra = ["--config", config] if config else []
    r = run(
        script,
        ["--train", train, "--test", test, "--output", out, *extra, *[x for s in args.set for x in ("--set", s)]],
    )
    if r["returncode"] != 0:
        raise SystemExit(f"{script} failed ({r['returncode']}):\n{r['stderr'][-4000:]}")
    with open(os.path.join(out, "metrics.json")) as fh:
        return {"wall_seconds": r["wall_seconds"], **json.load(fh)}


def data_sets(args, folder: str) -> list[tuple[str, str, str, str | None]]:
    """(name, kind, ratings Parquet, config) of every data set to run."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    out = []
    if args.movielens:
        path = os.path.join(folder, "movielens.parquet")
        table = pq.read_table(args.movielens) if args.movielens.endswith(".parquet") else pcsv.read_csv(args.movielens)
        pq.write_table(_standard(table), path)
        name = os.path.basename(os.path.dirname(os.path.abspath(args.movielens))) or "movielens"
        both = [
            (f"{name}, explicit", "explicit", path, None),
            (f"{name} as implicit", "implicit", path, os.path.join(ROOT, "conf", "implicit.toml")),
        ]
        out += [d for d in both if args.kind in ("both", d[1])]
    if args.synthetic:
        for kind, seed in (("explicit", 3), ("implicit", 4)):
            if args.kind not in ("both", kind):
                continue
            path = os.path.join(folder, f"synthetic_{kind}.parquet")
            run = run_process(
                [
                    sys.executable,
                    os.path.join(HERE, "make_synthetic.py"),
                    "--ratings",
                    str(args.synthetic),
                    "--kind",
                    kind,
                    "--seed",
                    str(seed),
                    "--output",
                    path,
                ],
                os.environ.copy(),
            )
            if run["returncode"] != 0:
                raise SystemExit(f"make_synthetic.py failed:\n{run['stderr'][-2000:]}")
            config = os.path.join(ROOT, "conf", "implicit.toml") if kind == "implicit" else None
            out.append((f"{args.synthetic // 1000}k synthetic, {kind}", kind, path, config))
    return out


def _shown(args) -> str:
    """The command's arguments as the doc shows them (a file by its folder and name only)."""
    parts = []
    if args.movielens:
        path = os.path.abspath(args.movielens)
        parts.append(f"--movielens {os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}")
    if args.synthetic:
        parts.append(f"--synthetic {args.synthetic}")
    if args.kind != "both":
        parts.append(f"--kind {args.kind}")
    if args.split_seed != 42:
        parts.append(f"--split-seed {args.split_seed}")
    return " ".join(parts + [f"--set {s}" for s in args.set])


def main(argv: list[str] | None = None, runner=None) -> int:
    """`runner(script, job_args)`: how the jobs run (default: spark-submit processes, benchmark_job.submitted)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--movielens", help="a MovieLens ratings file (CSV with header, or Parquet)")
    p.add_argument("--synthetic", type=int, default=0, help="ratings of each synthetic set (0 = none)")
    p.add_argument("--kind", choices=("both", "explicit", "implicit"), default="both", help="which data sets")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--set", action="append", default=[], help="config key for both jobs, repeatable")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--doc", help="replace the tuning section of this markdown file with the table")
    p.add_argument(
        "--split-seed",
        type=int,
        default=42,
        help="the 80/20 split's seed (choose settings on others than the reported)",
    )
    args = p.parse_args(argv)
    if not args.movielens and not args.synthetic:
        p.error("give --movielens and/or --synthetic")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    run = runner or submitted(args, env)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mf_spark-tuning-") as folder:
        for name, kind, path, config in data_sets(args, folder):
            import pyarrow.parquet as pq

            where = os.path.join(folder, name.replace(" ", "_").replace(",", ""))
            os.makedirs(where)
            train, test = split_files(pq.read_table(path), where, args.split_seed)
            metric = "rmse" if kind == "explicit" else "ndcg_at_k"
            default = _job(args, run, "jobs/train.py", train, test, os.path.join(where, "default"), config)
            shipped = None
            if kind == "explicit":  # conf/explicit.toml: the settings that won on every explicit set
                shipped = _job(
                    args,
                    run,
                    "jobs/train.py",
                    train,
                    test,
                    os.path.join(where, "explicit_toml"),
                    os.path.join(ROOT, "conf", "explicit.toml"),
                )[metric]
            tuned = _job(args, run, "jobs/tune.py", train, test, os.path.join(where, "tuned"), config)
            t = tuned["tuning"]
            rows.append(
                {
                    "data": name,
                    "kind": kind,
                    "metric": metric,
                    "default": default[metric],
                    "explicit_toml": shipped,
                    "tuned": tuned[metric],
                    "validation": t["best_validation"],
                    "pick": t["best"],
                    "trials": t["trials"],
                    "search_seconds": t["seconds"],
                    "default_wall_seconds": default["wall_seconds"],
                    "tune_wall_seconds": tuned["wall_seconds"],
                }
            )
            print(
                f"{name}: test {metric} default {default[metric]:.4f}, "
                f"{'' if shipped is None else f'conf/explicit.toml {shipped:.4f}, '}tuned {tuned[metric]:.4f} "
                f"(validation {t['best_validation']:.4f}); {t['trials']} trials in {t['seconds']:.1f} s; "
                f"wall {default['wall_seconds']:.1f} s / {tuned['wall_seconds']:.1f} s; pick {t['best']}",
                flush=True,
            )
    table = (
        "| data | test metric | defaults | conf/explicit.toml | tuned | validation (tuned) | trials | "
        "search s | job wall s (train / tune) | chosen |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        pick = ", ".join(f"{k} {v}" for k, v in r["pick"].items())
        shipped = "-" if r["explicit_toml"] is None else f"{r['explicit_toml']:.4f}"
        table += (
            f"| {r['data']} | {'RMSE' if r['metric'] == 'rmse' else 'NDCG@10'} | {r['default']:.4f} | "
            f"{shipped} | {r['tuned']:.4f} | {r['validation']:.4f} | {r['trials']} | {r['search_seconds']:.1f} | "
            f"{r['default_wall_seconds']:.1f} / {r['tune_wall_seconds']:.1f} | {pick} |\n"
        )
    print(table, end="")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    if args.doc:
        update_doc(
            args.doc,
            "tuning",
            "## Tuning: the tune job's choice against the defaults\n\n"
            f"`python scripts/benchmark_tuning.py {_shown(args)}` (cold `spark-submit` processes on this host, "
            "one 80/20 split per data set; the tune "
            "job chooses on a validation split of the training file, the test file only scores the "
            "refit).\n\n" + table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
