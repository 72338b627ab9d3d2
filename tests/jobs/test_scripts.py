"""scripts/make_synthetic.py: any size finishes, with exactly the pairs asked for, the same every time."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_synthetic.py"


@pytest.fixture(scope="module")
def synthetic():
    spec = importlib.util.spec_from_file_location("make_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n", [1, 50, 2000, 30000])
@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_small_sizes_finish_with_distinct_pairs_at_most_the_density_cap(synthetic, n, kind):
    # Below ~100k ratings the power-law shape alone has fewer pairs than ratings (2000 ratings:
    # 20 x 60 = 1200 pairs), and drawing distinct pairs never finished.
    table = synthetic.generate(n, kind)
    user, item = table.column("user").to_numpy(), table.column("item").to_numpy()
    rating = table.column("rating").to_numpy()
    assert table.num_rows == n
    assert np.unique(user * (item.max() + 1) + item).size == n
    n_users, n_items = synthetic.shape(n)
    assert user.max() < n_users and item.max() < n_items
    assert n <= synthetic.MAX_DENSITY * n_users * n_items + 1
    if kind == "explicit":
        assert set(np.unique(rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    else:
        assert rating.min() >= 1 and np.all(rating == np.rint(rating))


def test_large_shapes_follow_movielens_and_are_not_widened(synthetic):
    assert synthetic.shape(1_000_000) == (6040, 3700)
    users, items = synthetic.shape(20_000_000)
    assert 130_000 < users < 145_000 and 25_000 < items < 28_000


def test_same_arguments_same_table_and_bad_sizes_refused(synthetic):
    assert synthetic.generate(3000, "implicit", seed=3).equals(synthetic.generate(3000, "implicit", seed=3))
    assert not synthetic.generate(3000, "implicit", seed=3).equals(synthetic.generate(3000, "implicit", seed=4))
    with pytest.raises(ValueError, match="at least 1"):
        synthetic.generate(0, "explicit")


@pytest.mark.parametrize("kind", ["implicit"])  # explicit ALS both ways: the benchmark_job test below
def test_benchmark_compares_both_models_and_writes_its_report(tmp_path, kind):
    # The whole script on a small synthetic set: both models fitted on one split, top-N timed, the
    # flop bound measured, the JSON report written with the ratios the closing figures come from.
    import os

    report = tmp_path / "report.json"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT.parent / "benchmark.py"),
            "--synthetic",
            "3000",
            "--kind",
            kind,
            "--iterations",
            "3",
            "--warmup",
            "0",
            "--matmul-size",
            "256",
            "--json",
            str(report),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(report.read_text())
    assert out["kind"] == kind and out["rank"] == 10 and out["iterations"] == 3
    assert out["n_train"] + out["n_test"] == 3000
    models = {run["model"]: run for run in out["runs"]}
    assert {"mllib", "ours"} <= set(models)
    for run in models.values():
        assert run["fit_seconds"] > 0 and run["topn_seconds"] > 0 and run["memory"]["driver_python_mb"] > 0
    assert models["ours"]["memory"]["workers_max_mb"] > 0  # MLlib runs in the JVM: no Python workers
    assert 0 < out["ratio_fit_seconds"] < 100
    metric = "rmse_difference" if kind == "explicit" else "ndcg_at_k_difference"
    assert abs(out[metric]) < 1.0
    bound = out["flop_bound"]
    assert bound["flops"]["total"] > 0 and bound["bound_seconds"] > 0 and bound["measured_over_bound"] > 0
    assert "fit s" in proc.stdout and "ours/MLlib" in proc.stdout


def test_benchmark_job_runs_both_jobs_as_separate_processes(tmp_path):
    """One pair of cold spark-submit runs on 3000 synthetic ratings: both jobs finish, the report
    holds their wall times, peak memory, our phases and the ratio."""
    report = tmp_path / "job.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT.parent / "benchmark_job.py"),
            "--synthetic",
            "3000",
            "--pairs",
            "1",
            "--iterations",
            "2",
            "--rank",
            "4",
            "--driver-memory",
            "1g",
            "--json",
            str(report),
            "--set",
            "spark.spark.ui.enabled=false",
            "--doc",
            str(tmp_path / "perf.md"),
            "--label",
            "tiny",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(report.read_text())
    s = r["summary"]
    assert s["ours"]["wall_seconds"] > 0 and s["mllib"]["wall_seconds"] > 0
    assert s["ratio_wall"] == round(s["ours"]["wall_seconds"] / s["mllib"]["wall_seconds"], 3)
    assert s["ours"]["peak_mb"] > 100 and s["mllib"]["peak_mb"] > 100  # a JVM at least
    assert {"read_validate", "fit", "total"} <= set(s["ours"]["phases"])
    assert {"session", "fit", "evaluate", "recommend_write", "total"} <= set(s["mllib"]["phases"])
    assert 0 < s["ours"]["rmse"] < 3 and 0 < s["mllib"]["rmse"] < 3
    assert "ours/MLlib" in proc.stdout
    doc = (tmp_path / "perf.md").read_text()
    assert doc.count("<!-- benchmark_job: tiny -->") == 1 and "| ours / MLlib |" in doc


def test_benchmark_job_report_medians_ratio_and_doc_section(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_job", SCRIPT.parent / "benchmark_job.py")
    bj = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bj)

    def run(wall, fit, mb):
        return {
            "wall_seconds": wall,
            "peak_mb": mb,
            "timings": {"session": 1.0, "fit": fit, "total": wall - 1},
            "spark_jobs": {"session": 0, "fit": 1},
            "rmse": 0.8,
            "ndcg_at_k": 0.1,
            "to_first_iteration": 2.0,
        }

    ours = [run(10, 2, 900), run(12, 3, 1000), run(11, 9, 950)]
    mllib = [run(30, 20, 800), run(20, 10, 700), run(40, 30, 750)]
    s = bj.summarize(ours, mllib)
    assert s["ours"]["wall_seconds"] == 11 and s["mllib"]["wall_seconds"] == 30
    assert s["ratio_wall"] == round(11 / 30, 3) and s["ours"]["peak_mb"] == 1000
    assert s["ours"]["phases"] == {"session": 1.0, "fit": 3.0, "total": 10.0}
    assert s["ours"]["to_first_iteration"] == 2.0

    class Args:
        label, argv, master, driver_memory, rank, iterations, reg, kind, alpha = (
            "a run",
            ["--synthetic", "10"],
            "local[2]",
            "8g",
            10,
            10,
            0.1,
            "explicit",
            1.0,
        )

    doc = tmp_path / "perf.md"
    doc.write_text("# Performance\n\nintro\n")
    for _ in range(2):  # the same label twice: replaced, not appended
        bj.update_doc(str(doc), "a run", bj.markdown(s, ours, Args))
    bj.update_doc(str(doc), "another", "x\n")
    text = doc.read_text()
    assert text.startswith("# Performance\n\nintro\n") and text.count("### a run") == 1
    assert "| ours / MLlib | **0.37** | |" in text and text.rstrip().endswith("<!-- /benchmark_job: another -->")


def test_benchmark_tuning_scores_defaults_explicit_toml_and_the_tune_job(spark, tmp_path):
    """The three jobs on 3000 synthetic ratings (in this process: the script's runner is the jobs'
    main()): the table has their test figures and the tune job's pick, and the doc section is written."""
    report, doc = tmp_path / "tuning.json", tmp_path / "perf.md"
    sets = ("model.iterations=2", "tune.trials=2", "tune.min_iterations=1", "tune.max_iterations=2")
    sets += ("tune.extend_rounds=0", "tune.seeds=1")
    argv = ["--synthetic", "3000", "--kind", "explicit", "--json", str(report), "--doc", str(doc)]
    assert _script("benchmark_tuning").main(argv + [x for s in sets for x in ("--set", s)], runner=_in_process) == 0
    (row,) = json.loads(report.read_text())
    # the two drawn trials, then the best one's other two listed item_reg_scale values (refined)
    assert row["data"] == "3k synthetic, explicit" and row["metric"] == "rmse" and row["trials"] == 4
    assert all(0 < row[k] < 3 for k in ("default", "explicit_toml", "tuned", "validation"))
    assert set(row["pick"]) >= {"rank", "reg", "iterations"}
    text = doc.read_text()
    assert text.count("<!-- benchmark_job: tuning -->") == 1 and "| 3k synthetic, explicit | RMSE |" in text


def test_benchmark_job_measures_each_job_above_the_floor():
    spec = importlib.util.spec_from_file_location("benchmark_job", SCRIPT.parent / "benchmark_job.py")
    bj = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bj)
    run = lambda wall: {
        "wall_seconds": wall,
        "peak_mb": 1.0,
        "timings": {"total": wall},
        "rmse": None,
        "ndcg_at_k": 0.1,
    }
    s = bj.summarize([run(20), run(24)], [run(40), run(44)], [run(10), run(14), run(12)])
    assert s["floor"]["wall_seconds"] == 12
    assert (s["ours"]["above_floor_seconds"], s["mllib"]["above_floor_seconds"]) == (10, 30)
    assert s["ratio_above_floor"] == round(10 / 30, 3)
    assert "ratio_above_floor" not in bj.summarize([run(20)], [run(40)])


def test_floor_job_writes_outputs_of_our_size(tmp_path):
    """The floor job's outputs: a factor row per user and item, k recommendations per user."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user": [0, 1, 2], "item": [0, 3, 1], "rating": [1.0, 2.0, 3.0]}), tmp_path / "tr.parquet")
    pq.write_table(pa.table({"user": [0], "item": [1], "rating": [4.0]}), tmp_path / "te.parquet")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "floor_job.py"), "--train", str(tmp_path / "tr.parquet"), "--test",
         str(tmp_path / "te.parquet"), "--output", str(tmp_path / "out"), "--rank", "3", "--k", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["n_train"], report["factor_rows"], report["recommendation_rows"]) == (3, 7, 6)
    assert pq.read_table(tmp_path / "out" / "factors" / "users").num_rows == 3
    assert pq.read_table(tmp_path / "out" / "recommendations").num_rows == 6


def _lightgcn_files(folder: Path, seed: int = 3) -> None:
    """A small data set in the LightGCN split's format: `user item item ...` per line."""
    g = np.random.default_rng(seed)
    train, test = [], []
    for u in range(60):
        items = g.choice(80, size=12, replace=False) if u % 2 else g.choice(40, size=12, replace=False)
        train.append(f"{u} " + " ".join(map(str, items[:9])))
        test.append(f"{u} " + " ".join(map(str, items[9:])))
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "test.txt").write_text("\n".join(test) + "\n")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_process(script: str, job_args: list[str]) -> dict:
    """A benchmark script's job runner for tests: the job's main() in this process (its session)."""
    job = importlib.import_module("jobs." + Path(script).stem)
    return {"returncode": job.main(job_args), "stderr": "", "wall_seconds": 0.0}


def test_benchmark_public_fetches_once_tunes_and_writes_its_section(spark, tmp_path):
    """From a mirror (a file:// folder here): the split is fetched into the cache and converted once,
    the tune job runs on it with recall@20, the train job runs its best.toml at each of --ranks, and
    the doc section sets our figures beside the published."""
    _lightgcn_files(tmp_path / "mirror" / "gowalla")
    report, doc, cache = tmp_path / "public.json", tmp_path / "quality.md", tmp_path / "cache"
    sets = ["tune.trials=2", "tune.min_iterations=1", "tune.max_iterations=2", "tune.seeds=1", "tune.extend_rounds=0"]
    argv = ["--base-url", (tmp_path / "mirror").as_uri(), "--cache", str(cache), "--json", str(report)]
    argv += ["--doc", str(doc), "--ranks", "3", *[x for s in sets for x in ("--set", s)]]
    assert _script("benchmark_public").main(argv, runner=_in_process) == 0
    got = json.loads(report.read_text())
    assert 0 < got["ours"]["recall_at_k"] <= 1 and got["ours"]["k"] == 20
    [wide] = got["wider"]
    assert wide["rank"] == 3 and wide["config"]["model"]["rank"] == 3 and wide["k"] == 20
    assert wide["config"]["model"]["reg"] == got["ours"]["tuning"]["best"]["reg"]  # the rest as the tune job chose
    assert got["ours"]["tuning"]["metric"] == "recall_at_k"
    assert {p.name for p in (cache / "gowalla").iterdir()} == {"train.txt", "test.txt", "train.parquet", "test.parquet"}
    text = doc.read_text()
    assert "### gowalla (LightGCN's split)" in text and "| LightGCN (published) | 0.1830 | 0.1554 |" in text
    assert f"| mf_spark train job on best.toml at rank 3 (0 s) | {wide['recall_at_k']:.4f} |" in text
    assert "--ranks 3`" in text


def test_benchmark_public_reads_the_split_format_and_scores_as_published(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_public", SCRIPT.parent / "benchmark_public.py")
    bp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bp)
    path = tmp_path / "train.txt"
    path.write_text("0 1 2 3\n1 2\n\n2\n")
    u, i = bp.read_lists(str(path))
    assert u.tolist() == [0, 0, 0, 1] and i.tolist() == [1, 2, 3, 2]  # a user without items adds none
    path.write_text("0 1 x\n")
    with pytest.raises(SystemExit, match="line 1: expected integer IDs"):
        bp.read_lists(str(path))
    # one user, 2 test items (one never seen in training: left out), top lists hit 1 of the other
    train_u, train_i = np.array([0, 0, 1]), np.array([0, 1, 2])
    test_u, test_i = np.array([0, 0]), np.array([2, 9])
    top = lambda users: np.array([[2] + [-1] * 19])
    got = bp.ranking(top, train_u, train_i, test_u, test_i)
    assert got["recall_at_k"] == 1.0 and got["ndcg_at_k"] == 1.0
    with pytest.raises(SystemExit):
        bp.main(["--cache", str(Path(bp.ROOT) / "cache")])  # inside the repository: refused
    assert bp.ranks("512, 1024") == [512, 1024]
    for bad in ("", "0", "x,2"):
        with pytest.raises(Exception, match="positive integers"):
            bp.ranks(bad)


def test_benchmark_cold_places_new_movies_and_scores_the_baselines(spark, tmp_path):
    """A small MovieLens-like folder (ratings.csv, movies.csv): the train and recommend jobs run with
    their --item-features, and the three methods are scored over the new movies."""
    g = np.random.default_rng(2)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    movies = [(m, f"Film {m} ({1980 + m % 30})", "|".join(g.choice(genres, size=2, replace=False))) for m in range(60)]
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "".join(f'{m},"{t}",{gs}\n' for m, t, gs in movies))
    fans = {x: set(g.choice(40, size=15, replace=False).tolist()) for x in genres}
    rows = [
        (u, m)
        for m, _, gs in movies
        for u in range(40)
        if any(u in fans[x] for x in gs.split("|")) and g.random() < 0.5
    ]
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},4.0,{k}\n" for k, (u, m) in enumerate(rows))
    )
    report, doc = tmp_path / "cold.json", tmp_path / "quality.md"
    argv = ["--movielens", str(tmp_path), "--cold-fraction", "0.25", "--json", str(report), "--doc", str(doc)]
    argv += [x for s in ("model.iterations=4", "model.rank=6") for x in ("--set", s)]
    assert _script("benchmark_cold").main(argv, runner=_in_process) == 0
    got = json.loads(report.read_text())
    assert got["cold_movies"] == 15 and set(got["methods"]) == {
        "mf_spark (map from features to factors)",
        "popularity",
        "features",
    }
    assert all(0 <= m["recall_at_k"] <= 1 and m["users"] > 0 for m in got["methods"].values())
    assert "### Cold items with features:" in doc.read_text()


def test_benchmark_cold_places_new_users_by_their_demographics(spark, tmp_path):
    """A small MovieLens-100k-like folder (u.data, u.user): the train and recommend jobs run with their
    --user-features, and the three methods are scored over the new users' held-out movies."""
    g = np.random.default_rng(3)
    jobs = ["artist", "engineer", "student"]
    users = [(u, int(g.integers(18, 70)), "MF"[u % 2], jobs[u % 3], f"{u % 10}{u:04d}") for u in range(1, 61)]
    (tmp_path / "u.user").write_text("".join(f"{u}|{a}|{s}|{j}|{z}\n" for u, a, s, j, z in users))
    taste = {j: set(g.choice(40, size=12, replace=False).tolist()) for j in jobs}
    rows = [(u, m) for u, _, _, j, _ in users for m in range(40) if (m in taste[j]) == (g.random() < 0.8)]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{m}\t4\t{k}\n" for k, (u, m) in enumerate(rows)))
    report, doc = tmp_path / "cold.json", tmp_path / "quality.md"
    argv = ["--movielens", str(tmp_path), "--side", "users", "--json", str(report), "--doc", str(doc)]
    argv += [x for s in ("model.iterations=4", "model.rank=6") for x in ("--set", s)]
    assert _script("benchmark_cold").main(argv, runner=_in_process) == 0
    got = json.loads(report.read_text())
    assert got["cold_users"] == 12 and set(got["methods"]) == {
        "mf_spark (map from features to factors)",
        "popularity",
        "features",
    }
    assert all(0 <= m["recall_at_k"] <= 1 and m["users"] == 12 for m in got["methods"].values())
    assert "### Cold users with features:" in doc.read_text()
