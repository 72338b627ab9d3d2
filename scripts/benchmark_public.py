"""The tune job on a public implicit-feedback benchmark with a published results table, as a user
runs it, beside the published figures and the `implicit` library's on the same split.

    python scripts/benchmark_public.py [--dataset gowalla|yelp2018|amazon-book] [--cache DIR]
        [--master local[2]] [--driver-memory 8g] [--implicit] [--set section.key=value ...]
        [--ranks 512,1024] [--json report.json] [--doc docs/quality.md]

The data are the train/test splits the LightGCN paper (He et al., SIGIR 2020) published and compared
on (binary interactions; one line per user: `user item item ...`). They are fetched once into
--cache (default ~/.cache/mf_spark/public, never the repository) and converted to Parquet there.
Then, as separate cold processes:
  1. the tune job on the train file with conf/implicit.toml, `tune.metric = recall_at_k` and
     `eval.k = 20` (validation carved from the train file; the test file only scores the refit);
  2. with --ranks, the train job on the tune job's best.toml at each of those ranks, all else as
     chosen (what a user who can afford a wider model runs next), with its wall time;
  3. with --implicit (pip install implicit), the `implicit` library's ALS over a small grid, each
     scored on the test file: the best of the grid is chosen on the test split, so its figure is an
     upper bound of what that library gives there.
Recall@20 and NDCG@20 are computed over all items with each user's training items excluded, as the
paper's table is (test pairs of items never seen in training count as misses there, and are left
out here: they are few).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchmark_job import ROOT, submitted, update_doc

BASE = "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data"
# recall@20, ndcg@20 as published: LightGCN (He et al. 2020, table 3, which also lists NGCF and
# Mult-VAE), MF-BPR from NGCF (Wang et al. 2019, table 2).
PUBLISHED = {
    "gowalla": {
        "MF-BPR": (0.1291, 0.1109),
        "NGCF": (0.1570, 0.1327),
        "Mult-VAE": (0.1641, 0.1335),
        "LightGCN": (0.1830, 0.1554),
    },
    "yelp2018": {
        "MF-BPR": (0.0433, 0.0354),
        "NGCF": (0.0579, 0.0477),
        "Mult-VAE": (0.0584, 0.0450),
        "LightGCN": (0.0649, 0.0530),
    },
    "amazon-book": {
        "MF-BPR": (0.0250, 0.0196),
        "NGCF": (0.0344, 0.0263),
        "Mult-VAE": (0.0407, 0.0315),
        "LightGCN": (0.0411, 0.0315),
    },
}
K = 20


def fetch(name: str, cache: str, base: str = BASE) -> str:
    """The folder of `name`'s train.txt and test.txt, downloaded from `base` once (each file written
    beside its place, then renamed: an interrupted download leaves no file that looks complete)."""
    folder = os.path.join(cache, name)
    os.makedirs(folder, exist_ok=True)
    for part in ("train.txt", "test.txt"):
        path = os.path.join(folder, part)
        if os.path.exists(path):
            continue
        url = f"{base}/{name}/{part}"
        print(f"fetching {url}", flush=True)
        partial = path + ".partial"
        with urllib.request.urlopen(url, timeout=120) as r, open(partial, "wb") as out:
            shutil.copyfileobj(r, out)
        if os.path.getsize(partial) == 0:
            raise SystemExit(f"{url}: empty download")
        os.replace(partial, path)
    return folder


def read_lists(path: str):
    """(users, items) int64 arrays of a `user item item ...` file; a user with no items adds none."""
    import numpy as np

    users, items = [], []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                ids = [int(x) for x in fields]
            except ValueError as e:
                raise SystemExit(f"{path}, line {n}: expected integer IDs `user item item ...` ({e})") from None
            users.extend([ids[0]] * (len(ids) - 1))
            items.extend(ids[1:])
    return np.asarray(users, np.int64), np.asarray(items, np.int64)


def as_parquet(folder: str) -> tuple[str, str]:
    """train.parquet and test.parquet (user, item, rating 1.0) beside the text files, made once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = []
    for part in ("train", "test"):
        path = os.path.join(folder, f"{part}.parquet")
        if not os.path.exists(path):
            u, i = read_lists(os.path.join(folder, f"{part}.txt"))
            table = pa.table({"user": u, "item": i, "rating": np.ones(u.size)})
            pq.write_table(table, path + ".partial")
            os.replace(path + ".partial", path)
        out.append(path)
    return out[0], out[1]


def ranking(scores_top, train_u, train_i, test_u, test_i) -> dict:
    """Recall and NDCG at K of top lists (`scores_top(users) -> (len(users), K)` item IDs, training
    items already excluded) against the test pairs of items known in training."""
    import numpy as np

    from mf_spark.kernels.metrics import ranking_metrics

    known = np.isin(test_i, train_i)
    u, i = test_u[known], test_i[known]
    order = np.lexsort((i, u))
    u, i = u[order], i[order]
    users, starts = np.unique(u, return_index=True)
    recs = scores_top(users)
    n_items = int(max(train_i.max(), test_i.max())) + 1
    got = ranking_metrics(recs, np.append(starts, u.size).astype(np.int64), i, n_items, K)
    return {"recall_at_k": got["recall_at_k"], "ndcg_at_k": got["ndcg_at_k"]}


GRID = [(f, r, a) for f in (64, 128, 256) for r in (0.01, 0.1) for a in (1.0, 10.0)]  # factors, reg, alpha


def implicit_library(train: str, test: str) -> dict | None:
    """The best of GRID for the `implicit` library's ALS on the test file (None when not installed)."""
    try:
        import implicit
    except ImportError:
        print("the implicit library is not installed (pip install implicit): its row is skipped", flush=True)
        return None
    import numpy as np
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    import threadpoolctl

    tr, te = pq.read_table(train), pq.read_table(test)
    tu, ti = tr.column("user").to_numpy(), tr.column("item").to_numpy()
    eu, ei = te.column("user").to_numpy(), te.column("item").to_numpy()
    shape = (int(max(tu.max(), eu.max())) + 1, int(max(ti.max(), ei.max())) + 1)
    seen = sp.csr_matrix((np.ones(tu.size, np.float32), (tu, ti)), shape=shape)
    best = None
    for factors, reg, alpha in GRID:
        started = time.perf_counter()
        model = implicit.cpu.als.AlternatingLeastSquares(
            factors=factors, regularization=reg, alpha=alpha, iterations=15, random_state=0
        )
        with threadpoolctl.threadpool_limits(1, "blas"):  # the library's own threads do the work
            model.fit(seen, show_progress=False)

        def top(users, model=model):
            ids, _ = model.recommend(users, seen[users], N=K, filter_already_liked_items=True)
            return np.asarray(ids, np.int64)

        got = {**ranking(top, tu, ti, eu, ei), "factors": factors, "reg": reg, "alpha": alpha}
        got["seconds"] = time.perf_counter() - started
        print(
            f"implicit ALS factors {factors} reg {reg} alpha {alpha}: recall@{K} {got['recall_at_k']:.4f}", flush=True
        )
        if best is None or got["recall_at_k"] > best["recall_at_k"]:
            best = got
    return best


def _job(args, script: str, config: str, sets: list[str], train: str, test: str, out: str, runner=None) -> dict:
    """One job on the split, as a user runs it; its metrics.json with the job's wall time."""
    job = ["--train", train, "--test", test, "--output", out, "--config", config]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    r = (runner or submitted(args, env))(script, job + [x for s in sets for x in ("--set", s)])
    if r["returncode"] != 0:
        raise SystemExit(f"{script} failed ({r['returncode']}):\n{r['stderr'][-4000:]}")
    with open(os.path.join(out, "metrics.json")) as fh:
        return {"wall_seconds": r["wall_seconds"], **json.load(fh)}


def tune_job(args, train: str, test: str, out: str, runner=None) -> dict:
    sets = [f"eval.k={K}", "tune.metric=recall_at_k", *args.set]
    return _job(args, "jobs/tune.py", os.path.join(ROOT, "conf", "implicit.toml"), sets, train, test, out, runner)


def wider(args, train: str, test: str, tuned: str, work: str, runner=None) -> list[dict]:
    """The train job on the tune job's best.toml (in `tuned`) at each of --ranks."""
    best = os.path.join(tuned, "best.toml")
    return [
        {"rank": rank, **_job(args, "jobs/train.py", best, [f"model.rank={rank}", f"eval.k={K}"], train, test,
                              os.path.join(work, f"rank-{rank}"), runner)}
        for rank in args.ranks
    ]  # fmt: skip


def ranks(text: str) -> list[int]:
    """--ranks: comma-separated positive integers."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected ranks as positive integers separated by commas, got {text!r}")
    return out


def markdown(report: dict) -> str:
    name, ours, lib = report["dataset"], report["ours"], report["implicit"]
    t = ours["tuning"]
    pick = ", ".join(f"{k} {v}" for k, v in t["best"].items())
    rows = [
        f"| mf_spark tune job (validation recall@{K} {t['best_validation']:.4f}) | "
        f"**{ours['recall_at_k']:.4f}** | {ours['ndcg_at_k']:.4f} |"
    ]
    rows += [
        f"| mf_spark train job on best.toml at rank {w['rank']} ({w['wall_seconds']:.0f} s) | "
        f"{w['recall_at_k']:.4f} | {w['ndcg_at_k']:.4f} |"
        for w in report.get("wider", [])
    ]
    if lib:
        rows.append(
            f"| `implicit` ALS, best of {len(GRID)} on the test split (factors {lib['factors']}, reg {lib['reg']}, "
            f"alpha {lib['alpha']}) | {lib['recall_at_k']:.4f} | {lib['ndcg_at_k']:.4f} |"
        )
    rows += [f"| {m} (published) | {r:.4f} | {n:.4f} |" for m, (r, n) in PUBLISHED[name].items()]
    return (
        f"### {name} (LightGCN's split)\n\n`python scripts/benchmark_public.py --dataset {name}"
        f"{' --implicit' if lib is not None else ''}{''.join(' --set ' + s for s in report['sets'])}"
        f"{' --ranks ' + ','.join(str(w['rank']) for w in report['wider']) if report.get('wider') else ''}` "
        f"(tune + train wall time {ours['wall_seconds']:.0f} s on {report['master']}; chosen: {pick})\n\n"
        f"| model | recall@{K} | NDCG@{K} |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def main(argv: list[str] | None = None, runner=None) -> int:
    """`runner(script, job_args)`: how the job runs (default: a spark-submit process, benchmark_job.submitted)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(PUBLISHED), default="gowalla")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "mf_spark", "public"))
    p.add_argument("--base-url", default=BASE, help="where the datasets' folders are (a mirror, or file://)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--implicit", action="store_true", help="also the implicit library's ALS (pip install implicit)")
    p.add_argument("--set", action="append", default=[], help="config key for the tune job, repeatable")
    p.add_argument("--ranks", type=ranks, default=[], help="also the train job on best.toml at these ranks: 512,1024")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--doc", help="markdown file whose section for this dataset the run replaces (docs/quality.md)")
    args = p.parse_args(argv)
    if os.path.abspath(args.cache).startswith(ROOT + os.sep):
        p.error("--cache must be outside the repository: the data are never committed")
    train, test = as_parquet(fetch(args.dataset, args.cache, args.base_url))
    with tempfile.TemporaryDirectory(prefix="mf_spark-public-") as work:
        ours = tune_job(args, train, test, os.path.join(work, "tuned"), runner)
        wide = wider(args, train, test, os.path.join(work, "tuned"), work, runner)
    lib = implicit_library(train, test) if args.implicit else None
    report = {"dataset": args.dataset, "master": args.master, "sets": args.set, "ours": ours, "wider": wide}
    report["implicit"] = lib
    best = max(r for r, _ in PUBLISHED[args.dataset].values())
    print(
        f"{args.dataset}: mf_spark recall@{K} {ours['recall_at_k']:.4f} (NDCG@{K} {ours['ndcg_at_k']:.4f}), "
        f"best published {best:.4f}, ratio {ours['recall_at_k'] / best:.3f}; tune + train {ours['wall_seconds']:.0f} s"
        + "".join(f"; rank {w['rank']} {w['recall_at_k']:.4f} ({w['wall_seconds']:.0f} s)" for w in wide)
        + (f"; implicit ALS {lib['recall_at_k']:.4f}" if lib else ""),
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    if args.doc:
        update_doc(args.doc, f"public: {args.dataset}", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
