"""MLflow tracking (mf_spark.run.tracking): a train run logged to a local file store, a missing mlflow
refused before anything runs, and a tracking server that fails leaves the published run alone."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import planted

from jobs import train as train_job
from mf_spark.core import config
from mf_spark.core.errors import ConfigError
from mf_spark.run import tracking

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is in the test extras; not installed here")


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    u, i, r, _ = planted(n_users=30, n_items=20, rank=2, density=0.5, seed=2)
    path = tmp_path_factory.mktemp("track") / "ratings.csv"
    path.write_text("user,item,rating\n" + "".join(f"{a},{b},{c:.3f}\n" for a, b, c in zip(u, i, r)))
    return str(path)


@pytest.mark.slow
def test_a_train_run_logs_config_history_metrics_and_outputs(spark, ratings, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "out"
    assert (
        train_job.main(
            [
                "--input",
                ratings,
                "--output",
                str(out),
                "--set",
                f"tracking.mlflow_uri={store}",
                "--set",
                "tracking.experiment=tests",
                "--set",
                "model.iterations=4",
                "--set",
                "model.rank=3",
            ]
        )
        == 0
    )
    client = mlflow.tracking.MlflowClient(store)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model.rank"] == "3" and run.data.params["split.method"] == "random"
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["rmse"] == pytest.approx(metrics["rmse"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "test_rmse")] == pytest.approx(
        [h["test_rmse"] for h in metrics["history"]]
    )
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "report.html", "model.json", "factors"} <= names
    assert {a.path for a in client.list_artifacts(run.info.run_id, "factors")} == {"factors/users", "factors/items"}


def test_tracking_without_mlflow_is_refused_before_anything_runs(monkeypatch, capsys, ratings, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'mf_spark\[mlflow\]'"):
        tracking.check(config.TrackingConfig(mlflow_uri="file:///tmp/x"))
    tracking.check(config.TrackingConfig())  # off: nothing to check
    assert (
        train_job.main(
            ["--input", ratings, "--output", str(tmp_path / "o"), "--set", "tracking.mlflow_uri=file:///tmp/x"]
        )
        == 2
    )
    assert "mlflow package is not installed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_failing_tracking_server_leaves_the_published_run(spark, ratings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = tmp_path / "out"
    assert (
        train_job.main(
            [
                "--input",
                ratings,
                "--output",
                str(out),
                "--set",
                "model.iterations=2",
                "--set",
                "tracking.mlflow_uri=http://127.0.0.1:9",
            ]
        )
        == 0
    )
    assert (out / "_SUCCESS").exists() and (out / "report.html").exists()
    assert (
        "MLflow tracking at http://127.0.0.1:9 failed, the outputs are published all the same"
        in capsys.readouterr().err
    )


def test_params_are_flat_and_short():
    params = tracking.params_of(config.load(None, ["model.rank=7", "spark.spark.x=1"]))
    assert params["model.rank"] == "7" and params["spark.spark.x"] == "1"
    assert not any(k.startswith("tracking.") for k in params) and all(len(v) <= 500 for v in params.values())
