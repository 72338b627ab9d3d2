"""Where a run's time goes: wall seconds and Spark jobs per phase, in the order the phases ran.

    clock = PhaseClock()                      # the run's clock starts here (before the session)
    with clock.phase("read"):
        ...                                   # Spark jobs started here count for "read"
    clock.report()   # {"timings": {"read": 1.2, ..., "total": 9.8}, "spark_jobs": {"read": 2, ...}}

Jobs are counted by a Spark job group set for the length of each phase (the group the caller had is
put back after). Threads that start Spark jobs for a phase inherit its group when they are
`pyspark.InheritableThread`s, so they must not set a group of their own (use job tags instead).
Time outside every phase is reported as "other", so the phases always add up to the total. A Spark
Connect client sees no jobs: there every count is None (null in metrics.json).
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from mf_spark.core.session import is_connect

log = logging.getLogger("mf_spark")

_GROUP = "spark.jobGroup.id"
_DESCRIPTION = "spark.job.description"


_RUNNING: list[str] = []  # the phases open now, innermost last (what a stopped job was doing)


def current() -> str | None:
    return _RUNNING[-1] if _RUNNING else None


class PhaseClock:
    """Seconds and Spark job counts of named phases since the clock was made."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.jobs: dict[str, int] = {}
        self._run = uuid.uuid4().hex[:8]
        self._open: dict[str, tuple[float, str]] = {}  # phases running now -> (start, job group)
        self._seq = 0
        self.sc = None
        self.counted = True

    def attach(self, spark) -> "PhaseClock":
        """Count Spark jobs from here on (phases before the session exists count none). A Spark
        Connect client cannot see the server's jobs: its counts stay None."""
        if is_connect(spark):
            self.counted = False
        else:
            self.sc = spark.sparkContext
        return self

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase `name` (repeated names add up) and count the Spark jobs it starts."""
        self._seq += 1
        sc, group = self.sc, f"mf_spark-{self._run}-{self._seq}-{name}"
        before = None
        if sc is not None:
            before = (sc.getLocalProperty(_GROUP), sc.getLocalProperty(_DESCRIPTION))
            sc.setJobGroup(group, f"mf_spark: {name}")
        t0 = time.perf_counter()
        self._open[name] = (t0, group)
        _RUNNING.append(name)
        try:
            yield
        finally:
            _RUNNING.pop()
            del self._open[name]
            seconds = time.perf_counter() - t0
            jobs = self._count(group)
            if sc is not None:
                sc.setLocalProperty(_GROUP, before[0])
                sc.setLocalProperty(_DESCRIPTION, before[1])
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.jobs[name] = self.jobs.get(name, 0) + jobs
            if self.counted:
                log.info("phase %s: %.2f s, %d Spark job%s", name, seconds, jobs, "" if jobs == 1 else "s")
            else:
                log.info("phase %s: %.2f s", name, seconds)

    def total(self) -> float:
        return time.perf_counter() - self.started

    def report(self) -> dict:
        """{"timings": {phase: s, ..., "other": s, "total": s}, "spark_jobs": {phase: n, ...}}, in order;
        a phase still running counts up to now (metrics.json is written inside the last one)."""
        now = time.perf_counter()
        total = now - self.started
        seconds = dict(self.seconds)
        for name, (t0, _) in self._open.items():
            seconds[name] = seconds.get(name, 0.0) + now - t0
        timings = {k: round(v, 4) for k, v in seconds.items()}
        timings["other"] = round(max(0.0, total - sum(seconds.values())), 4)
        timings["total"] = round(total, 4)
        jobs: dict[str, int | None] = dict(self.jobs)
        for name, (_, group) in self._open.items():
            jobs[name] = jobs.get(name, 0) + self._count(group)
        if not self.counted:
            jobs = dict.fromkeys(jobs)
        return {"timings": timings, "spark_jobs": jobs}

    def _count(self, group: str) -> int:
        """Spark jobs started so far in a phase's job group (0 before a session is attached)."""
        return 0 if self.sc is None else len(self.sc.statusTracker().getJobIdsForGroup(group))
