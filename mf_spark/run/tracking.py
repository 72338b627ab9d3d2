"""Optional experiment tracking with MLflow: a finished run's config, history, metrics and outputs.

    [tracking]
    mlflow_uri = "file:///data/mlruns"      # or http://mlflow:5000, databricks, sqlite:///mlflow.db
    experiment = "recommenders"

With tracking.mlflow_uri set (and the mlflow package installed: pip install 'mf_spark[mlflow]'), every
train, tune and compare run logs one MLflow run: the config as params ("model.rank", ...), the
history as step metrics (loss, train_rmse, test_rmse, ndcg_at_k by iteration; a tuning run also each
trial's validation metric by trial), the final metrics, and as artifacts metrics.json, report.html,
the model (model.json and factors/) and any other output files the job names. The run is logged
after the outputs are published: tracking that fails is reported as an error in the log and never
takes back an output (the job still exits 0).
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlparse

from mf_spark.core.config import RunConfig, TrackingConfig
from mf_spark.core.errors import ConfigError

log = logging.getLogger("mf_spark")

# MLflow keeps params short; a longer value (a long list of null values, say) is cut to this.
MAX_PARAM_CHARS = 500
STEP_KEYS = ("loss", "train_rmse", "test_rmse", "ndcg_at_k", "seconds")


def check(cfg: TrackingConfig) -> None:
    """ConfigError, before anything runs, when tracking is asked for and MLflow is not installed."""
    if not cfg.mlflow_uri:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"config key tracking.mlflow_uri is {cfg.mlflow_uri!r}, but the mlflow package is not "
            f"installed: pip install 'mf_spark[mlflow]' (or leave tracking.mlflow_uri empty)"
        ) from None


def params_of(run: RunConfig) -> dict[str, str]:
    """The config as flat MLflow params, section.key -> text (Spark conf as spark.<key>)."""
    out: dict[str, str] = {}
    for section, body in run.to_dict().items():
        if section == "tracking":
            continue
        for key, value in body.items():
            out[f"{section}.{key}"] = str(value)[:MAX_PARAM_CHARS]
    return out


def _local(path: str) -> str | None:
    """A local folder's path, or None for an output on another file system (HDFS, ...)."""
    parsed = urlparse(path)
    return parsed.path if parsed.scheme in ("", "file") else None


def log_run(
    cfg: TrackingConfig,
    run_name: str,
    run: RunConfig,
    metrics: dict[str, Any],
    output: str,
    artifacts: tuple[str, ...] = ("metrics.json", "report.html", "model.json", "factors"),
    steps: dict[str, list[tuple[int, float]]] | None = None,
) -> str | None:
    """Log one finished run (see the module docstring); returns the MLflow run id, None when tracking
    is off or failed. `metrics`: metrics.json's content (its "history" becomes step metrics);
    `steps`: more step metrics, name -> [(step, value)]; `artifacts`: files and folders of the
    published `output` to attach, where they exist."""
    if not cfg.mlflow_uri:
        return None
    try:
        import mlflow

        if cfg.mlflow_uri.startswith("file:") or "://" not in cfg.mlflow_uri:
            # A file store was asked for by name: MLflow 3 refuses it unless this is set.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(cfg.mlflow_uri)
        mlflow.set_experiment(cfg.experiment)
        with mlflow.start_run(run_name=run_name) as active:
            mlflow.log_params(params_of(run))
            final = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "k"
            }
            mlflow.log_metrics(final)
            for entry in metrics.get("history") or []:
                values = {k: float(entry[k]) for k in STEP_KEYS if isinstance(entry.get(k), (int, float))}
                if values:
                    mlflow.log_metrics(values, step=int(entry["iteration"]))
            for name, points in (steps or {}).items():
                for step, value in points:
                    if value is not None:
                        mlflow.log_metric(name, float(value), step=int(step))
            folder = _local(output)
            if folder is None:
                mlflow.set_tag("mf_spark.output", output)
                log.info(
                    "MLflow: %s is not a local folder; its path is logged as the tag mf_spark.output, "
                    "its files are not attached",
                    output,
                )
            else:
                for name in artifacts:
                    path = os.path.join(folder, name)
                    if os.path.isdir(path):
                        mlflow.log_artifacts(path, artifact_path=name)
                    elif os.path.isfile(path):
                        mlflow.log_artifact(path, artifact_path=os.path.dirname(name) or None)
            run_id = active.info.run_id
        log.info("MLflow: logged run %s in experiment %r at %s", run_id, cfg.experiment, cfg.mlflow_uri)
        return run_id
    except Exception as e:  # noqa: BLE001 - the outputs are published; tracking must not take them back
        log.error(
            "MLflow tracking at %s failed, the outputs are published all the same: %s: %s",
            cfg.mlflow_uri,
            type(e).__name__,
            e,
        )
        return None
