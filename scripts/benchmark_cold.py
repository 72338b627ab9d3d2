"""New items with features and no ratings: how well the jobs place them, against popularity and a
features-only model, on a MovieLens release (ratings.csv and movies.csv: genres, and the year in the
title).

    python scripts/benchmark_cold.py --movielens DIR [--side items|users] [--cold-fraction 0.2] [--seed 1]
        [--master local[2]] [--driver-memory 4g] [--set section.key=value ...] [--json F] [--doc docs/quality.md]

A share of the rated movies (--cold-fraction, drawn with --seed) is made new: all their ratings are
held out, and the other ratings (every rating as an interaction) are the training file. Then, as
separate processes, as a user runs them:
  1. jobs/train.py --item-features movies (genres as tags, year) with conf/implicit.toml;
  2. jobs/recommend.py --item-features new movies --include new movies --n 20: every user's best 20
     of the new movies, placed by the map the model learned from its known movies' features.
Against, over the same candidates (the new movies) and users (those with held-out ratings of them):
  popularity   a new movie scores the mean number of training ratings of the known movies of each
               of its genres (a movie has no popularity of its own before its first rating);
  features     a user scores a new movie by the cosine of its features with the mean features of the
               user's training movies (content-based, no factors).
Printed and written: recall@20 and NDCG@20 over the new movies' held-out interactions.

With --side users (a MovieLens 100k folder: u.data, u.user), new users instead: a share of the users
is held out whole, the train job learns the map from the known users' demographics (age, gender,
occupation, the ZIP code's first character as a region) with --user-features, and the recommend job
lists 20 of the known movies for each new user, placed by the map. Against popularity (the most
rated movies) and a features-only model (the movies of the known users most like each new one by
the cosine of their features, weighted by it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from benchmark_job import ROOT, submitted, update_doc

from mf_spark.kernels.metrics import ranking_metrics

K = 20


def movie_features(path: str) -> pa.Table:
    """movieId, genres (tags), year (from the title's "(1995)"; null where absent)."""
    movies = pcsv.read_csv(path)
    years = [
        float(m.group(1)) if (m := re.search(r"\((\d{4})\)\s*$", t or "")) else None
        for t in movies.column("title").to_pylist()
    ]
    genres = [None if g in (None, "(no genres listed)") else g for g in movies.column("genres").to_pylist()]
    return pa.table({"movieId": movies.column("movieId"), "genres": genres, "year": pa.array(years, pa.float64())})


def ml100k(folder: str) -> tuple[pa.Table, pa.Table]:
    """MovieLens 100k's ratings (userId, movieId, rating) and its users' features (userId, age,
    gender, occupation, region: the ZIP code's first character)."""
    data = pcsv.read_csv(
        os.path.join(folder, "u.data"),
        read_options=pcsv.ReadOptions(column_names=["userId", "movieId", "rating", "timestamp"]),
        parse_options=pcsv.ParseOptions(delimiter="\t"),
    )
    users = pcsv.read_csv(
        os.path.join(folder, "u.user"),
        read_options=pcsv.ReadOptions(column_names=["userId", "age", "gender", "occupation", "zip"]),
        parse_options=pcsv.ParseOptions(delimiter="|"),
        convert_options=pcsv.ConvertOptions(column_types={"zip": pa.string(), "age": pa.float64()}),
    )
    region = [z[:1] if z else None for z in users.column("zip").to_pylist()]
    features = users.drop_columns(["zip"]).append_column("region", pa.array(region, pa.string()))
    return data.select(["userId", "movieId", "rating"]), features


def cold_split(
    ratings: pa.Table, fraction: float, seed: int, key: str = "movieId"
) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """(training ratings, held-out ratings of the cold rows, the cold IDs): a share of the `key`
    column's IDs made new, all their ratings held out."""
    ids = np.unique(ratings.column(key).to_numpy())
    cold = np.sort(np.random.default_rng(seed).choice(ids, size=int(round(fraction * ids.size)), replace=False))
    is_cold = np.isin(ratings.column(key).to_numpy(), cold)
    return ratings.filter(pa.array(~is_cold)), ratings.filter(pa.array(is_cold)), cold


def score_lists(scores: np.ndarray, k: int) -> np.ndarray:
    """(users, k) column positions of each row's k best scores, best first."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def evaluate(recs: dict, held: pa.Table, candidates: np.ndarray) -> dict:
    """recall and NDCG at K of `recs` (user -> list of movie IDs, best first) against `held`'s
    pairs of the candidate movies (sorted IDs: those any method may list)."""
    u, i = held.column("userId").to_numpy(), held.column("movieId").to_numpy()
    keep = np.isin(i, candidates)
    u, i = u[keep], i[keep]
    users = np.unique(u)
    pos = np.searchsorted(candidates, i)
    order = np.lexsort((pos, u))
    starts = np.searchsorted(u[order], users)
    lists = np.full((users.size, K), -1, np.int64)
    for row, user in enumerate(users):
        got = [int(np.searchsorted(candidates, m)) for m in recs.get(int(user), [])[:K]]
        lists[row, : len(got)] = got
    m = ranking_metrics(lists, np.append(starts, u.size).astype(np.int64), pos[order], candidates.size, K)
    return {"recall_at_k": m["recall_at_k"], "ndcg_at_k": m["ndcg_at_k"], "users": int(users.size)}


def baselines(train: pa.Table, held: pa.Table, features: pa.Table, cold: np.ndarray) -> dict:
    """Popularity by genre and the content-based model's top lists for the held-out users."""
    from mf_spark.model.features import Encoding

    enc = Encoding.fit(features, "movieId")
    fid = features.column("movieId").to_numpy()
    F = enc.matrix(features)
    genre_cols = [j for j, n in enumerate(enc.names) if n.startswith("genres=")]
    tu, ti = train.column("userId").to_numpy(), train.column("movieId").to_numpy()
    warm, counts = np.unique(ti, return_counts=True)
    row_of = {m: r for r, m in enumerate(fid)}
    Fw = F[[row_of[m] for m in warm]]
    genre_pop = np.array([counts[Fw[:, j] > 0].mean() if (Fw[:, j] > 0).any() else 0.0 for j in genre_cols])
    Fc = F[[row_of[m] for m in cold]]
    G = Fc[:, genre_cols]
    pop = (G @ genre_pop) / np.maximum(G.sum(axis=1), 1)
    users = np.unique(held.column("userId").to_numpy())
    pop_list = [int(cold[j]) for j in score_lists(pop[None, :], K)[0]]
    # content-based: each user's mean feature vector over their training movies (standardized numbers
    # and one-hot values), cosine against the new movies'
    unit = lambda M: M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)
    order = np.argsort(tu, kind="stable")
    su, si = tu[order], ti[order]
    profiles = np.zeros((users.size, F.shape[1]))
    for row, user in enumerate(users):
        lo, hi = np.searchsorted(su, user), np.searchsorted(su, user, side="right")
        if hi > lo:
            profiles[row] = F[[row_of[m] for m in si[lo:hi]]].mean(axis=0)
    content = score_lists(unit(profiles) @ unit(Fc).T, K)
    return {
        "popularity": {int(u): pop_list for u in users},
        "features": {int(u): [int(cold[j]) for j in content[r]] for r, u in enumerate(users)},
    }


def user_baselines(train: pa.Table, features: pa.Table, cold: np.ndarray) -> dict:
    """Popularity's and the features-only model's lists of known movies for the new users."""
    from mf_spark.model.features import Encoding

    enc = Encoding.fit(features, "userId")
    fid = features.column("userId").to_numpy()
    F = enc.matrix(features)
    unit = lambda M: M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)
    tu, ti = train.column("userId").to_numpy(), train.column("movieId").to_numpy()
    known, movies = np.unique(tu), np.unique(ti)
    row_of = {u: r for r, u in enumerate(fid)}
    R = np.zeros((known.size, movies.size))
    R[np.searchsorted(known, tu), np.searchsorted(movies, ti)] = 1.0
    popular = [int(movies[j]) for j in score_lists(R.sum(axis=0)[None, :], K)[0]]
    # features only: the known users' movies, each weighted by how like the new user they are
    likeness = np.maximum(unit(F[[row_of[u] for u in cold]]) @ unit(F[[row_of[u] for u in known]]).T, 0.0)
    content = score_lists(likeness @ R, K)
    return {
        "popularity": {int(u): popular for u in cold},
        "features": {int(u): [int(movies[j]) for j in content[r]] for r, u in enumerate(cold)},
    }


def _recommended(recs: str) -> dict[int, list[int]]:
    got = pq.read_table(os.path.join(recs, "recommendations")).sort_by([("user", "ascending"), ("rank", "ascending")])
    out: dict[int, list[int]] = {}
    for u, i in zip(got.column("user").to_pylist(), got.column("item").to_pylist()):
        out.setdefault(int(u), []).append(int(i))
    return out


def _run_jobs(run, jobs: list[tuple[str, list[str]]]) -> None:
    for script, job_args in jobs:
        r = run(script, job_args)
        if r["returncode"]:
            raise SystemExit(f"{script} failed ({r['returncode']}):\n{r['stderr'][-4000:]}")


def _report(args, rows: dict, report: dict, label: str, heading: str) -> int:
    """Print each method's figures; write the JSON report (--json) and the doc's section (--doc):
    `heading` (its title and command line) above the table."""
    for name, m in rows.items():
        print(f"{name}: recall@{K} {m['recall_at_k']:.4f}, NDCG@{K} {m['ndcg_at_k']:.4f} ({m['users']} users)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**report, "methods": rows}, fh, indent=2)
    if args.doc:
        table = "\n".join(f"| {n} | {m['recall_at_k']:.4f} | {m['ndcg_at_k']:.4f} |" for n, m in rows.items())
        update_doc(args.doc, label, f"{heading}\n\n| model | recall@{K} | NDCG@{K} |\n|---|---|---|\n{table}\n")
    return 0


def _placed(run, args, train: pa.Table, features: pa.Table, cold: np.ndarray, side: str):
    """Train on `train` with the known rows' features (conf/implicit.toml and --set), then recommend K
    items with the new rows placed by their features: for the new users, or among the new items. The
    lists by user, and the feature map's report from model.json."""
    key = "userId" if side == "users" else "movieId"
    with tempfile.TemporaryDirectory(prefix="mf_spark-cold-") as work:
        paths = {name: os.path.join(work, f"{name}.parquet") for name in ("train", "known", "new")}
        pq.write_table(train, paths["train"])
        is_new = np.isin(features.column(key).to_numpy(), cold)
        pq.write_table(features.filter(pa.array(~is_new)), paths["known"])
        pq.write_table(features.filter(pa.array(is_new)), paths["new"])
        ids = os.path.join(work, "new_ids.txt")
        with open(ids, "w") as fh:
            fh.write("".join(f"{v}\n" for v in cold))
        model, recs = os.path.join(work, "model"), os.path.join(work, "recs")
        flag = f"--{side[:-1]}-features"
        train_cmd = ["--input", paths["train"], "--output", model, flag, paths["known"]]
        train_cmd += ["--config", os.path.join(ROOT, "conf", "implicit.toml")]
        train_cmd += [x for s in args.set for x in ("--set", s)]
        chosen = ["--users", ids] if side == "users" else ["--include", ids]
        recommend_cmd = ["--model", model, "--output", recs, flag, paths["new"], *chosen, "--n", str(K)]
        _run_jobs(run, [("jobs/train.py", train_cmd), ("jobs/recommend.py", recommend_cmd)])
        with open(os.path.join(model, "model.json")) as fh:
            return _recommended(recs), json.load(fh)["features"][side]


def cold_users(args, run) -> int:
    """--side users: new users placed by their demographics."""
    ratings, features = ml100k(args.movielens)
    train, held, cold = cold_split(ratings, args.cold_fraction, args.seed, key="userId")
    ours, fmap = _placed(run, args, train, features, cold, "users")
    lists = {"mf_spark (map from features to factors)": ours, **user_baselines(train, features, cold)}
    candidates = np.unique(train.column("movieId").to_numpy())
    rows = {name: evaluate(r, held, candidates) for name, r in lists.items()}
    name = os.path.basename(os.path.abspath(args.movielens))
    return _report(
        args,
        rows,
        {"cold_users": int(cold.size), "held_out": held.num_rows, "map": fmap},
        f"cold users: {name}",
        f"### Cold users with features: {name}\n\n`python scripts/benchmark_cold.py --movielens {name} "
        f"--side users --cold-fraction {args.cold_fraction} --seed {args.seed}` ({cold.size} of the users made "
        f"new, {held.num_rows} held-out ratings of theirs; candidates: the {candidates.size} known movies; the "
        f"map: R^2 {fmap['r2']:.3f} on {fmap['fit_rows']} known users, reg {fmap['reg']:g})",
    )


def main(argv: list[str] | None = None, runner=None) -> int:
    """`runner(script, job_args)`: how the jobs run (default: spark-submit processes, benchmark_job.submitted)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--movielens",
        required=True,
        help="folder of a MovieLens release (ratings.csv, movies.csv; --side users: u.data, u.user)",
    )
    p.add_argument("--side", choices=("items", "users"), default="items", help="which side's new rows to place")
    p.add_argument("--cold-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--set", action="append", default=[], help="config key for the train job, repeatable")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--doc", help="markdown file whose cold-start section the run replaces")
    args = p.parse_args(argv)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    run = runner or submitted(args, env)
    if args.side == "users":
        return cold_users(args, run)
    ratings = pcsv.read_csv(os.path.join(args.movielens, "ratings.csv"))
    features = movie_features(os.path.join(args.movielens, "movies.csv"))
    train, held, cold = cold_split(ratings, args.cold_fraction, args.seed)
    ours, fmap = _placed(run, args, train.select(["userId", "movieId", "rating"]), features, cold, "items")
    lists = {"mf_spark (map from features to factors)": ours, **baselines(train, held, features, cold)}
    rows = {name: evaluate(r, held, cold) for name, r in lists.items()}
    name = os.path.basename(os.path.abspath(args.movielens))
    return _report(
        args,
        rows,
        {"cold_movies": int(cold.size), "held_out": held.num_rows, "map": fmap},
        f"cold items: {name}",
        f"### Cold items with features: {name}\n\n`python scripts/benchmark_cold.py --movielens {name} "
        f"--cold-fraction {args.cold_fraction} --seed {args.seed}` ({cold.size} of the rated movies made new, "
        f"{held.num_rows} held-out ratings of them, {rows['popularity']['users']} users; candidates: the new "
        f"movies; the map: R^2 {fmap['r2']:.3f} on {fmap['fit_rows']} known movies, reg {fmap['reg']:g})",
    )


if __name__ == "__main__":
    sys.exit(main())
