"""A Spark standalone cluster on this machine (a master and workers on 127.0.0.1, from the pyspark
package's own launcher), for the cluster benchmark and the cluster test:

    with standalone.cluster(workers=2, cores=1, memory="2g", folder=tmp) as c:
        ... spark-submit --master {c.master} ...

Every process it starts is stopped (its process group killed) when the block ends, also on errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def spark_bin(name: str) -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):  # not listening yet, or a page still being served empty while it starts
        return 0


def _wait(ok, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"standalone cluster: no {what} after {seconds:.0f} s")
        time.sleep(0.5)


@dataclasses.dataclass
class Cluster:
    master: str  # spark://127.0.0.1:PORT
    processes: list[subprocess.Popen]

    def alive(self) -> bool:
        """Whether the master and every worker are still running."""
        return all(p.poll() is None for p in self.processes)


@contextlib.contextmanager
def cluster(workers: int = 2, cores: int = 1, memory: str = "1g", folder: str | Path = ".", python: str = ""):
    """Yields the Cluster (its master's URL, its processes) once `workers` workers of `cores` cores and
    `memory` each have registered; logs and work folders go under `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=python or sys.executable,
        SPARK_LOG_DIR=str(folder / "logs"),
        SPARK_WORKER_DIR=str(folder / "work"),
    )
    port, ui = free_port(), free_port()
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> None:
        out = open(folder / log, "w")
        procs.append(
            subprocess.Popen(
                [str(spark_bin("spark-class")), *args],
                env=env,
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the JVMs spark-class starts stay in this group
            )
        )

    try:
        master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
        start([*master, "--port", str(port), "--webui-port", str(ui)], "master.log")
        _wait(lambda: _port_open(port) and alive_workers(ui) == 0, 60, "master")
        for w in range(workers):
            args = ["--host", "127.0.0.1", "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port())]
            start(["org.apache.spark.deploy.worker.Worker", *args, f"spark://127.0.0.1:{port}"], f"worker{w}.log")
        _wait(lambda: alive_workers(ui) == workers, 90, f"{workers} workers")
        yield Cluster(f"spark://127.0.0.1:{port}", procs)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
