"""The SparkSession a job runs in, from the [spark] section of the config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

from pyspark import SparkConf
from pyspark.sql import SparkSession
from threadpoolctl import threadpool_limits

from mf_spark.core.errors import ConfigError

# Spark 4 measures an Arrow batch's byte size after every row it writes to a Python worker unless
# this is Int.MaxValue (then only maxRecordsPerBatch, 10,000 rows by default, cuts batches). With
# the 64 MiB default the per-row check dominates mapInArrow input.
ARROW_BYTES_KEY = "spark.sql.execution.arrow.maxBytesPerBatch"
ARROW_BYTES_UNBOUNDED = str(2**31 - 1)
ARROW_ROWS_KEY = "spark.sql.execution.arrow.maxRecordsPerBatch"
FIT_BATCH_ROWS = 1_000_000  # 12 MB of (user, item, rating) per batch

# Defaults a local run needs; any [spark] key or spark-submit --conf overrides them.
DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
    # Let adaptive execution coalesce the partitions of cached plans too: the per-user split's window
    # leaves spark.sql.shuffle.partitions (200) partitions in the cached training set, and every later
    # pass over it (seen lists, evaluation) then ran 200 tasks of a few kB, several times slower
    # than over the coalesced partitions.
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
    ARROW_BYTES_KEY: ARROW_BYTES_UNBOUNDED,
}


SHUFFLE_PARTITIONS_KEY = "spark.sql.shuffle.partitions"


def start(app_name: str, conf: dict[str, str] | None = None) -> SparkSession:
    """Get or create the session. Under spark-submit the master and resources come from it; run as
    `python -m jobs.<name>` the master defaults to local[*].

    DEFAULTS apply only to keys that neither spark-submit (--conf, spark-defaults.conf) nor `conf`
    set. A session this creates also gets, when nothing sets it, a shuffle partition count of twice
    the cores Spark runs tasks on (at least 8) instead of 200: on a few cores, 200 near-empty map
    outputs and tasks per shuffle cost a job more than its data does. A running session's own
    settings are left as they are."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = dict(conf or {})
    remote = conf.pop(REMOTE_KEY, None) or os.environ.get("SPARK_REMOTE")
    if remote:
        return _connect(app_name, remote, conf)
    existing = SparkSession.getActiveSession()  # a caller's: its settings are its own
    given = dict(SparkConf().getAll())  # what spark-submit passed (system properties)
    builder = SparkSession.builder.appName(app_name)
    for key, value in {**{k: v for k, v in DEFAULTS.items() if k not in given}, **(conf or {})}.items():
        builder = builder.config(key, value)
    with _jvm_leaves_sigterm_to_us():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("MF_SPARK_SPARK_LOG_LEVEL", "WARN"))
    if existing is None and SHUFFLE_PARTITIONS_KEY not in given and SHUFFLE_PARTITIONS_KEY not in conf:
        spark.conf.set(SHUFFLE_PARTITIONS_KEY, str(max(8, 2 * spark.sparkContext.defaultParallelism)))
    check_worker_python(spark)
    return spark


@contextmanager
def _jvm_leaves_sigterm_to_us() -> Iterator[None]:
    """When this process launches Spark's JVM (`python -m jobs.x`, not spark-submit), launch it with
    SIGTERM ignored (in this process only across the fork and exec, by wrapping pyspark's Popen): a
    JVM started so installs no handler of its own (as under nohup), so a
    scheduler's SIGTERM to the process group stops the job through ours (cli.guarded: clean up,
    release the lease, one line) instead of the JVM dying under it. The JVM still exits when this
    process ends (it watches its standard input), and pyspark already does the same for SIGINT."""
    import signal
    import threading

    from pyspark import SparkContext, java_gateway

    launching = "PYSPARK_GATEWAY_PORT" not in os.environ and SparkContext._gateway is None
    real = getattr(java_gateway, "Popen", None)
    if not launching or real is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def popen(*args, **kwargs):  # ignored only across the fork and exec: a SIGTERM after is ours
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            return real(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    java_gateway.Popen = popen
    try:
        yield
    finally:
        java_gateway.Popen = real


REMOTE_KEY = "spark.remote"  # a [spark] key, or --remote: the Spark Connect server to use


def _connect(app_name: str, url: str, conf: dict[str, str]) -> SparkSession:
    """A Spark Connect session on `url` (sc://host:port, or local[N] to start a server in this process).
    Only session (SQL) settings can be given to a server that runs already: of DEFAULTS, the SQL ones
    are set here, each unless `conf` sets it; the rest are the server's. `conf` goes as it is."""
    builder = SparkSession.builder.remote(url).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in DEFAULTS.items():
        if key.startswith("spark.sql.") and key not in conf:
            spark.conf.set(key, value)
    if SHUFFLE_PARTITIONS_KEY not in conf:
        spark.conf.set(SHUFFLE_PARTITIONS_KEY, str(max(8, 2 * parallelism(spark))))
    return spark


@contextmanager
def row_batched_arrow(spark: SparkSession) -> Iterator[None]:
    """Within the block (a fit): Arrow batches to Python workers cut by row count only (ARROW_BYTES_KEY,
    for library callers whose session did not come from `start`), FIT_BATCH_ROWS rows each. A value
    the session sets explicitly is kept. The fit's Python tasks read their whole partition at once, so
    the batch size only sets how many batches it comes in; fewer, larger ones start the resident
    stage sooner than Spark's 10,000 rows."""
    changed = []
    for key, value in ((ARROW_BYTES_KEY, ARROW_BYTES_UNBOUNDED), (ARROW_ROWS_KEY, str(FIT_BATCH_ROWS))):
        if spark.conf.get(key, None) is None:
            spark.conf.set(key, value)
            changed.append(key)
    try:
        yield
    finally:
        for key in changed:
            spark.conf.unset(key)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Within the block: this process's BLAS (the driver's, during a fit) runs on one thread.

    OpenBLAS's worker threads spin for a while after every call before they sleep. The driver's only
    BLAS work in a fit is small (the k x k Gramian of weighted ALS, once a half-step), but in local mode
    the spinning threads took a core from the tasks solving the blocks and slowed every iteration.
    Python workers already run one BLAS thread (Spark sets OMP_NUM_THREADS to the task's cores).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def is_connect(spark) -> bool:
    """Whether `spark` is a Spark Connect session (no SparkContext, RDDs or JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def is_local(spark) -> bool:
    """Whether this process is the driver of a local master (a Connect client never is: its
    driver is the server's)."""
    return not is_connect(spark) and spark.sparkContext.master.startswith("local")


def parallelism(spark) -> int:
    """Tasks that run at once by default: the SparkContext's default parallelism, or under Spark
    Connect the server's spark.default.parallelism (else its shuffle partitions)."""
    if not is_connect(spark):
        return max(1, spark.sparkContext.defaultParallelism)
    for key in ("spark.default.parallelism", SHUFFLE_PARTITIONS_KEY):
        try:
            value = spark.conf.get(key, None)
        except Exception:  # noqa: BLE001 - a key the server does not know
            value = None
        if value:
            return max(1, int(value))
    return 2


class Shipped:
    """A value the tasks read as `.value`, as they read a broadcast: on a Spark Connect session,
    which has no broadcasts, it travels in the task closure."""

    def __init__(self, value) -> None:
        self.value = value

    def unpersist(self, blocking: bool = False) -> None:
        pass


def broadcast(spark, value):
    """`value` broadcast (a classic session) or Shipped (Spark Connect): either way tasks read `.value`."""
    return Shipped(value) if is_connect(spark) else spark.sparkContext.broadcast(value)


_CHUNK = 8 << 20  # bytes per row when data travels to on_cluster's task


def server_here() -> bool:
    """Whether this process runs the Spark Connect server it is a client of (remote("local[N]"),
    which pyspark marks with SPARK_LOCAL_REMOTE): the server's tasks then see this machine's files,
    and on_cluster runs its function here, without a Spark job."""
    return os.environ.get("SPARK_LOCAL_REMOTE") == "1"


def on_cluster(spark, fn, *args, data: bytes | memoryview | None = None):
    """`fn(*args)` run in one task on `spark`'s cluster, its value (or its exception) sent back: how a
    Spark Connect client, which may not see the cluster's files, reaches them. `data` (bytes, e.g. a
    file's contents) travels as ordered chunks and is passed as the last argument. Value and
    exception travel as cloudpickle, as Spark's own Python tasks send theirs (never stored). When the
    server runs in this process (server_here), `fn` runs here."""
    if server_here():
        return fn(*args, bytes(data)) if data is not None else fn(*args)
    import pyarrow as pa
    from pyspark import cloudpickle

    def task(batches):
        chunks = [(at, c) for b in batches if "chunk" in b.schema.names for at, c in zip(*b.to_pydict().values())]
        given = (*args, b"".join(c for _, c in sorted(chunks))) if data is not None else args
        try:
            answer = (True, fn(*given))
        except Exception as exc:  # noqa: BLE001 - raised again on the client
            answer = (False, exc)
        yield pa.record_batch([pa.array([cloudpickle.dumps(answer)], pa.binary())], names=["answer"])

    if data is None:
        frame = spark.range(1, numPartitions=1)
    else:
        view = memoryview(data)
        parts = [view[at : at + _CHUNK].tobytes() for at in range(0, len(view), _CHUNK)] or [b""]
        table = pa.table({"at": pa.array(range(len(parts)), pa.int64()), "chunk": pa.array(parts, pa.binary())})
        frame = spark.createDataFrame(table).coalesce(1)
    ok, value = cloudpickle.loads(frame.mapInArrow(task, "answer binary").collect()[0][0])
    if not ok:
        raise value
    return value


_WORKER_PYTHONS: dict[str, str | None] = {}  # executable -> why it cannot serve (None: it can)


def check_worker_python(spark) -> None:
    """Under a local master, ConfigError when the Python the workers run (PYSPARK_PYTHON or
    spark.pyspark.python; Spark's default is `python3`, often the system's) cannot import numpy and
    pyarrow: one line saying what to set, instead of a worker's traceback mid-job. Checked once per
    executable (a process start, a fraction of a second); other masters' nodes are not this machine's."""
    if not is_local(spark):
        return
    exe = spark.sparkContext.pythonExec or "python3"
    found = shutil.which(exe)
    if found and os.path.realpath(found) == os.path.realpath(sys.executable):
        return  # this interpreter, which has numpy and pyarrow (the jobs' case): no process to start
    if exe not in _WORKER_PYTHONS:
        try:
            run = subprocess.run([exe, "-c", "import numpy, pyarrow"], capture_output=True, text=True, timeout=60)
            bad = None if run.returncode == 0 else (run.stderr.strip().splitlines() or ["failed"])[-1]
        except (OSError, subprocess.TimeoutExpired) as e:
            bad = str(e)
        _WORKER_PYTHONS[exe] = bad
    if _WORKER_PYTHONS[exe]:
        raise ConfigError(
            f"Spark's Python workers run {exe!r}, which cannot import numpy and pyarrow ({_WORKER_PYTHONS[exe]}); "
            f"set PYSPARK_PYTHON={sys.executable} (or spark.pyspark.python) before the Spark session starts"
        )
