"""The resident stage's driver side: submit the barrier stage, accept its tasks, stream every
half-step's fixed side to them and gather their rows (see mf_spark.als.engines.stream)."""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import secrets
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
from pyspark import InheritableThread
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.als.blocks import gather_counts, rating_columns
from mf_spark.als.engines.stream.task import _split_for_tasks, _task_body
from mf_spark.als.engines.stream.wire import (
    HANDSHAKE_SECONDS,
    ExchangeError,
    FrameError,
    Gate,
    challenge,
    keepalive,
    recv_frame,
    send_frame,
)
from mf_spark.als.halfstep import Engine, HalfStepResult, assemble, fixed_side
from mf_spark.core.types import ITEM, RATING, USER, USER_IDX
from mf_spark.data.index import IdMap
from mf_spark.data.ready import PACKED, Triples
from mf_spark.kernels.solve import SolveSpec

log = logging.getLogger("mf_spark")

STALL_WINDOW = 8  # recent half-steps whose times set the stall deadline
STALL_MULTIPLE = 20.0
RETRIES = 3  # new stage attempts for one half-step after a lost task, before the stage is given up


@dataclass
class _Conn:
    task: int
    tasks: int  # tasks in its stage (the partitions of the input it reads)
    stage: int  # Spark stage id: every submission of the resident job gets a new, larger one
    pid: int  # of the Python worker running the task (diagnostics, fault tests)
    sock: socket.socket
    peer: str  # host:port it takes its peers' rating pieces on
    counts: list[np.ndarray] | None = None  # row ids and counts of its blocks, once built


class Resident(Engine):
    """The resident stage over `ratings`: a DataFrame (one task per partition; resident_inputs), or
    ratings the driver holds (ready.Triples: n_tasks tasks, each sent its pieces by the driver).

        with Resident(resident_inputs(train, n_tasks)[0], spec, host, num_blocks).start() as stage:  # ExchangeError
            counts = stage.row_counts("user", n_users)
            items = stage.half_step("item", n_items, X, user_bias, previous)
    """

    def __init__(
        self,
        ratings: DataFrame | Triples,
        spec: SolveSpec,
        host: str,
        num_blocks: dict[str, int],
        n_tasks: int = 0,
        deadline: float = 600.0,
        stall_floor: float = 45.0,
        maps: tuple[IdMap, IdMap] | None = None,
    ):
        self.deadline = deadline  # seconds a half-step (or the blocks' building) may take
        self.stall_floor = stall_floor
        self.step_seconds: collections.deque[float] = collections.deque(maxlen=STALL_WINDOW)
        self.gate = Gate("resident stage: hello listener", self._hello, log)
        self.triples = ratings if isinstance(ratings, Triples) else None
        self.ratings, self.spec, self.host, self.num_blocks = ratings, spec, host, num_blocks
        self.maps = maps  # the ratings' rows carry IDs as read: the tasks index them (ready.Keyed)
        if self.triples is not None:
            self.n_tasks, self.sc = n_tasks, self.triples.spark.sparkContext
        else:
            self.n_tasks = ratings.rdd.getNumPartitions()  # the stage's own count wins (_connect)
            self.sc = ratings.sparkSession.sparkContext
        self.token = secrets.token_hex(16)
        self.hellos: queue.Queue[_Conn] = queue.Queue()
        self.conns: list[_Conn] = []
        self.counts: list[np.ndarray] | None = None
        self.stage = -1  # stage id of the tasks connected last; older ones are stale
        self.launches = 0
        self.job_error: BaseException | None = None
        self.job_done = threading.Event()
        self.tag = f"mf_spark-resident-{self.token[:8]}"

    # -- lifecycle
    def start(self) -> "Resident":
        """Listen, submit the stage and wait for every task to connect; ExchangeError when it cannot."""
        try:
            self.server = socket.create_server((self.host, 0), backlog=max(16, 2 * self.n_tasks))
        except OSError as e:
            raise ExchangeError(f"cannot listen on the driver address {self.host!r}: {e}") from e
        ACTIVE.add(self)
        self.address = (self.host, self.server.getsockname()[1])
        self.job = self._job()
        self.acceptor = threading.Thread(target=self._accept, name="mf_spark-accept", daemon=True)
        self.acceptor.start()
        try:
            self._launch()
            self._connect()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    name = "stream"

    def __enter__(self) -> "Resident":
        return self

    def close(self) -> None:
        self.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.job_error is None:
            self.pause()  # the tasks stop, the job ends
        else:
            for c in self.conns:
                c.sock.close()
            self.conns = []
            self.sc.cancelJobsWithTag(self.tag)
            self.job_done.wait(timeout=120)
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept thread (close alone does not)
        except OSError:
            pass
        self.server.close()
        self.acceptor.join(timeout=5)
        ACTIVE.discard(self)
        while not self.hellos.empty():
            self.hellos.get_nowait().sock.close()

    def _job(self):
        body = _task_body(self.address, self.token, self.num_blocks, self.triples is not None, self.maps)
        if self.triples is None:
            return self.ratings.mapInArrow(body, "done int", barrier=True)
        # Nothing for the tasks to read: an RDD stage, which a cold application starts seconds sooner
        # than its first SQL stage (docs/performance.md).
        return self.sc.parallelize(range(self.n_tasks), self.n_tasks).barrier().mapPartitions(body)

    def _launch(self) -> None:
        """Submit the barrier job (again) in a thread; its tasks connect from a new, larger stage id."""
        self.launches += 1
        self.job_error, self.job_done = None, threading.Event()
        done = self.job_done

        def run_job() -> None:
            # A tag, not a job group: the job stays in the caller's group (phases.PhaseClock counts it).
            self.sc.addJobTag(self.tag)
            self.sc.setInterruptOnCancel(True)
            try:
                self.job.collect()
            except BaseException as e:  # reported by whichever driver call waits next
                self.job_error = e
            finally:
                done.set()

        InheritableThread(target=run_job, name=f"mf_spark-resident-{self.launches}", daemon=True).start()

    def pause(self) -> None:
        """Let the stage's tasks finish (they hold every slot) so that other Spark jobs can run, e.g. a
        checkpoint write; the next half-step submits the stage again."""
        for c in self.conns:
            try:
                send_frame(c.sock, {"op": "stop"})
            except OSError:
                pass
        for c in self.conns:
            c.sock.close()
        self.conns = []
        if not self.job_done.wait(timeout=self.deadline):  # a frozen task: end the job for it
            log.warning("resident stage: the stage did not end %.0f s after stop; cancelling it", self.deadline)
            self.sc.cancelJobsWithTag(self.tag)
            self.job_done.wait(timeout=60)

    def _drop(self) -> None:
        """After a lost task: end the old job (Spark aborts a failed barrier job) and make a new plan
        (running a plan whose barrier stage failed fails again at once; after a clean end, `pause`,
        the same plan runs again)."""
        for c in self.conns:
            c.sock.close()
        self.conns = []
        if not self.job_done.wait(timeout=5):  # a task that froze, not one that died: cancel
            self.sc.cancelJobsWithTag(self.tag)
            self.job_done.wait(timeout=60)
        self.job = self._job()

    def _accept(self) -> None:
        """Accept connections until the server closes, through the Gate: each proves itself in a
        thread of its own, so that no number of peers which say nothing holds up a task."""
        self.gate.serve(self.server)

    def _hello(self, sock: socket.socket) -> None:
        """One connection: the fit's secret proven (wire.challenge), then a hello frame naming the task;
        anything else raises, and the Gate closes it and counts it."""
        keepalive(sock)
        challenge(sock, self.token, "task")
        header, _ = recv_frame(sock, wait=HANDSHAKE_SECONDS, limit=0)
        fields = {k: header.get(k) for k in ("task", "tasks", "stage", "pid")}
        if (
            any(type(v) is not int or v < 0 for v in fields.values())
            or not isinstance(header.get("peer"), str)
            or fields["task"] >= fields["tasks"]
        ):
            raise FrameError(f"a hello with bad fields {str(header)[:120]}")
        self.gate.proven(sock)
        sock.settimeout(None)
        self.hellos.put(_Conn(fields["task"], fields["tasks"], fields["stage"], fields["pid"], sock, header["peer"]))

    def _connect(self) -> None:
        """Wait for one connection from every task of the job just submitted: the first stage id above
        the last one accepted that all n_tasks tasks connect from (a failed job's late tasks carry
        an older id and are dropped)."""
        waiting: dict[int, dict[int, _Conn]] = {}
        while True:
            try:
                c = self.hellos.get(timeout=0.1)
            except queue.Empty:
                if self.job_done.is_set():
                    raise ExchangeError(
                        f"the resident stage ended before its {self.n_tasks} tasks connected: "
                        f"{self.job_error or 'no error reported'}"
                    ) from self.job_error
                continue
            if c.stage <= self.stage:
                c.sock.close()
                continue
            stage = waiting.setdefault(c.stage, {})
            if c.task in stage:  # a retried task of this stage: the newest connection wins
                stage[c.task].sock.close()
            stage[c.task] = c
            if len(stage) == c.tasks:
                conns = [stage.pop(t) for t in range(c.tasks)]
                for old in waiting.values():
                    for other in old.values():
                        other.sock.close()
                self._build(conns)
                self.n_tasks, self.conns, self.stage = c.tasks, conns, c.stage
                if self.counts is None:
                    self.counts = [c.counts for c in self.conns]
                return

    def _build(self, conns: list[_Conn]) -> None:
        """Give every task the others' addresses, then wait for each to report its built blocks."""
        peers = [c.peer for c in conns]
        t = self.triples
        pieces = (
            _split_for_tasks(t.u, t.i, t.r.astype(np.float32), self.num_blocks, len(conns))
            if t is not None
            else [[] for _ in conns]
        )
        try:
            for c in conns:
                send_frame(c.sock, {"op": "peers", "peers": peers}, pieces[c.task])
                pieces[c.task] = []
            for c in conns:
                header, c.counts = recv_frame(c.sock, wait=self.deadline)
                if header.get("op") != "built" or len(c.counts) != 4:
                    raise ConnectionError(f"task {c.task} answered {header.get('op')!r} instead of its blocks")
        except (OSError, ConnectionError) as e:
            for c in conns:
                c.sock.close()
            raise ExchangeError(f"a resident task failed while building its blocks: {e}") from e

    # -- work
    def row_counts(self, side: str, n_rows: int) -> np.ndarray:
        """`gather_counts` of `side` from the counts the tasks reported of their blocks."""
        at = 0 if side == "user" else 2
        return gather_counts(n_rows, [(got[at], got[at + 1]) for got in self.counts or []])

    def half_step(
        self,
        side: str,
        n_rows: int,
        fixed: np.ndarray,
        fixed_bias: np.ndarray | None,
        previous: HalfStepResult,
    ) -> HalfStepResult:
        """New factors for every row of `side` against `fixed`; repeated on a new stage attempt when a
        task is lost (Spark retries barrier stages whole), RETRIES times."""
        spec = self.spec.on(side)
        retries = RETRIES
        f = fixed_side(n_rows, fixed, fixed_bias, spec, previous)
        arrays = [f.factors] + [a for a in (f.bias, f.gram) if a is not None]
        header = {
            "op": "solve",
            "side": side,
            "bias": f.bias is not None,
            "gram": f.gram is not None,
            "spec": dataclasses.asdict(spec),
        }
        for attempt in range(retries + 1):
            try:
                if not self.conns:  # paused, or a task was lost: (re)submit the stage
                    started = time.perf_counter()
                    self._launch()
                    self._connect()
                    if attempt:
                        log.warning(
                            "resident stage: stage %d connected after %.1f s; repeating the %s half-step",
                            self.stage,
                            time.perf_counter() - started,
                            side,
                        )
                return self._solve_once(header, arrays, f.x0, n_rows, previous)
            except (OSError, ConnectionError, ExchangeError, ValueError, IndexError, KeyError) as e:
                # A task lost while solving, or while the stage was being submitted again after a
                # pause (an executor killed during a checkpoint write): a new plan, a new stage.
                if attempt == retries:
                    raise ExchangeError(f"lost the resident stage {retries + 1} times; last: {e}") from e
                log.warning("resident stage: lost a task (%s); submitting the stage again", e)
                self._drop()
        raise AssertionError("unreachable")

    def top(
        self, X: np.ndarray, user_offset: np.ndarray | None, Y: np.ndarray, item_bias: np.ndarray | None, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Every user's best n items, the items the user rated excluded, scored in the tasks that hold
        the user blocks (so the training pairs never leave them): (user ids, counts, items, scores),
        flattened per user as kernels.topk.top_n. None when the stage is not running or a task is
        lost meanwhile (the caller then scores through Spark jobs)."""
        if not self.conns:
            return None
        header = {"op": "top", "n": int(n), "bias": user_offset is not None}
        try:
            for c in self.conns:
                rows = c.counts[0]
                arrays = [np.ascontiguousarray(X[rows], np.float32), np.ascontiguousarray(Y, np.float32)]
                if user_offset is not None:
                    arrays += [np.asarray(user_offset[rows], np.float32), np.asarray(item_bias, np.float32)]
                send_frame(c.sock, header, arrays)
            parts = [recv_frame(c.sock, wait=self.deadline)[1] for c in self.conns]
        except (OSError, ConnectionError) as e:
            log.warning("resident stage: lost a task while scoring top-%d lists (%s); scoring by Spark jobs", n, e)
            self._drop()
            return None
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(4))

    def _solve_once(
        self, header: dict, arrays: list[np.ndarray], x0: np.ndarray | None, n_rows: int, previous: HalfStepResult
    ) -> HalfStepResult:
        at = 0 if header["side"] == "user" else 2
        for c in self.conns:
            if x0 is None:
                send_frame(c.sock, header, arrays)
            else:  # each task gets its own rows, in the order of the ids it reported
                send_frame(c.sock, {**header, "x0": True}, arrays + [x0[c.counts[at]]])
        parts = []
        started, wait = time.monotonic(), self.stall_wait()
        for c in self.conns:
            try:
                reply, got = recv_frame(c.sock, wait=max(0.0, started + wait - time.monotonic()))
            except FrameError as e:
                if wait < self.deadline and str(e).startswith("timed out"):
                    raise ExchangeError(
                        f"task {c.task} sent no {header['side']} half-step in {wait:.0f} s (the slowest of the last "
                        f"{len(self.step_seconds)} took {1000 * max(self.step_seconds):.0f} ms): a stall"
                    ) from e
                raise
            parts.append((got[0], got[1], got[2] if len(got) > 2 else None, reply["loss"]))
        self.step_seconds.append(time.monotonic() - started)
        return assemble(n_rows, arrays[0].shape[1], self.spec, previous, parts)

    def stall_wait(self) -> float:
        """How long a half-step's replies may take: before any half-step is timed, the fixed deadline;
        then max(stall_floor, STALL_MULTIPLE x the slowest recent one), capped by the deadline. A task
        that stops answering is then noticed in under a minute, not after the fixed ten."""
        if not self.step_seconds:
            return self.deadline
        return min(self.deadline, max(self.stall_floor, STALL_MULTIPLE * max(self.step_seconds)))


ACTIVE = weakref.WeakSet()


def driver_host(sc) -> str:
    """The address executors reach the driver at (Spark's own spark.driver.host)."""
    return sc.getConf().get("spark.driver.host", None) or socket.gethostbyname(socket.gethostname())


def resident_inputs(ratings: DataFrame, n_tasks: int, keyed: bool = False) -> list[DataFrame]:
    """user_idx, item_idx (int), rating (float) of `ratings` (`keyed`: user, item as read, which the
    tasks index, or packed pieces of such rows), one partition per resident task: the ways to try,
    cheapest first.

    The tasks read these rows once, cut them per destination task and exchange the pieces among
    themselves (`_exchange`), so the ratings cross from the JVM to Python once. Performance note: when
    `ratings` already has n_tasks partitions they are read where they are (no shuffle, so the stage
    starts sooner); that fails when the stage's lineage changes the partition count (a union or a
    coalesce: barrier stages refuse those), hence the second way, one shuffle in the JVM (rows placed
    by user).
    """
    if keyed and PACKED in ratings.columns:  # pieces of rows (ready.Keyed.packed): a few values to move
        rows, placed = ratings, ratings.repartition(n_tasks)
    elif keyed:
        rows = ratings.select(USER, ITEM, F.col(RATING).cast("float").alias(RATING))
        placed = rows.repartition(n_tasks, USER)
    else:
        rows = rating_columns(ratings)
        placed = rows.repartitionById(n_tasks, F.col(USER_IDX) % F.lit(n_tasks))
    return [rows, placed] if rows.rdd.getNumPartitions() == n_tasks else [placed]
