"""The JVM options of every JVM the tests start, and a class-data archive (the JDK's dynamic CDS) that
spares those JVMs most of their start.

A Spark JVM of the suite lives for seconds on tiny data, and much of its CPU goes to loading and
verifying the same few thousand classes from Spark's jars. The archive holds those classes as one
session of the suite loaded them (a session, a fit through the estimator, the train job on a CSV file),
and every later JVM maps them instead. scripts/run_tests.sh names it in MF_SPARK_TEST_CLASS_ARCHIVE
(`python tests/class_archive.py` prints its path, one per .venv and Java build) and, when it is missing,
builds it in the background while the first tests run (`--build PATH`): it appears whole, by a rename,
and a JVM started before that, or one whose version or class path does not match it, starts as it would
without it. Its CDS messages are off, so no output changes. Products never use it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

# C1 alone and the serial collector spend a fraction of the CPU that tiered compilation and G1's
# threads spend starting a short JVM, and the suite is bound by CPU on two cores.
BASE_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
ROOT = Path(__file__).resolve().parents[1]

# What the archive's JVM runs: the classes a session of the suite loads (Arrow frames, Python UDFs over
# Arrow, CSV and Parquet, the SQL the fit and the jobs plan).
WORKLOAD = r"""
import os, shutil, sys, tempfile
import numpy as np
from pyspark.sql import SparkSession
from mf_spark.ml import ALS
from mf_spark.run import cli
from jobs import train

folder = tempfile.mkdtemp(prefix="mf_spark-class-archive-")
spark = (
    SparkSession.builder.master("local[2]")
    .config("spark.driver.extraJavaOptions", f"-XX:ArchiveClassesAtExit={sys.argv[1]}")
    .config("spark.sql.shuffle.partitions", "4")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    .getOrCreate()
)
g = np.random.default_rng(0)
triples = zip(g.integers(0, 30, 400), g.integers(0, 20, 400), g.integers(1, 6, 400))
rows = [(int(u), int(i), float(r)) for u, i, r in triples]
df = spark.createDataFrame(rows, "user int, item int, rating double")
model = ALS(userCol="user", itemCol="item", rank=3, maxIter=2).fit(df)
model.transform(df).count()
model.recommendForAllUsers(3).count()
model.write().save(os.path.join(folder, "model"))
with open(os.path.join(folder, "ratings.csv"), "w") as f:
    f.write("user,item,rating,timestamp\n" + "".join(f"{u},{i},{r},{k}\n" for k, (u, i, r) in enumerate(rows)))
argv = ["--input", os.path.join(folder, "ratings.csv"), "--output", os.path.join(folder, "out")]
train.run(spark, cli.parse_train([*argv, "--set", "model.rank=3", "--set", "model.iterations=2"]))
jvm = spark.sparkContext._gateway.proc
spark.stop()
jvm.stdin.close()  # the JVM ends when its stdin does, then writes the archive: wait for that
jvm.wait(timeout=300)
shutil.rmtree(folder, ignore_errors=True)
"""


def archive_path() -> Path:
    """One archive per pyspark and Java build: the JVM refuses an archive of another build anyway."""
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    key = hashlib.sha256(f"{version('pyspark')}\n{java}\n{BASE_OPTIONS}".encode()).hexdigest()[:12]
    return ROOT / ".venv" / f"spark-classes-{key}.jsa"


def java_tool_options() -> str:
    archive = os.environ.get("MF_SPARK_TEST_CLASS_ARCHIVE", "")
    return f"{BASE_OPTIONS} -XX:SharedArchiveFile={archive} -Xlog:cds*=off" if archive else BASE_OPTIONS


def build(path: Path) -> int:
    """Runs WORKLOAD in a JVM that writes its classes to `path` when it exits; written under a
    temporary name first, so a build cut short never leaves a half archive behind."""
    if path.is_file():
        return 0
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    env = {**os.environ, "JAVA_TOOL_OPTIONS": BASE_OPTIONS, "PYSPARK_PYTHON": sys.executable}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    try:
        run = subprocess.run([sys.executable, "-c", WORKLOAD, str(partial)], env=env, timeout=600)
        if run.returncode == 0 and partial.is_file():
            partial.replace(path)
            return 0
        print(f"class archive not built: the workload exited {run.returncode}", file=sys.stderr)
        return 1
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        sys.exit(build(Path(sys.argv[2])))
    print(archive_path())
