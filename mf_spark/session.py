"""The SparkSession a job runs in, from the [spark] section of the config."""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

# Defaults a local run needs; any [spark] key or spark-submit --conf overrides them.
DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
    # Let adaptive execution coalesce the partitions of cached plans too: the per-user split's window
    # leaves spark.sql.shuffle.partitions (200) partitions in the cached training set, and every later
    # pass over it (seen lists, evaluation) then ran 200 tasks of a few kB (measured on 800k ratings:
    # 4.2 s for the seen lists, 0.6 s once coalesced).
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}


def start(app_name: str, conf: dict[str, str] | None = None) -> SparkSession:
    """Get or create the session. Under spark-submit the master and resources come from it; run as
    `python -m jobs.<name>` the master defaults to local[*]."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    for key, value in {**DEFAULTS, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("MF_SPARK_SPARK_LOG_LEVEL", "WARN"))
    return spark
