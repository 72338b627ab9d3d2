"""A run's lifecycle: the output's lease, recovery of a killed swap, fingerprinted checkpoints, refused
stores, and the input edge cases, through the train job where a user meets them."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import pytest

from jobs import train as train_job
from mf_spark.als import checkpoint
from mf_spark.core import config, fs
from mf_spark.core.errors import FAIL_AT_ENV, InputError
from mf_spark.data import read, validate
from mf_spark.data.local import read as local_read
from mf_spark.data.local import validate as local_validate
from mf_spark.run import write

TINY = [
    "--set",
    "model.rank=3",
    "--set",
    "model.iterations=2",
    "--set",
    "model.checkpoint_interval=1",
    "--set",
    "eval.every_iteration=false",
]


def _ratings(path, n_users=30, n_items=12, extra: str = ""):
    lines = ["user,item,rating"] + [
        f"u{u},i{(u * 7 + j) % n_items},{1 + (u + j) % 5}" for u in range(n_users) for j in range(4)
    ]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


# ---- the lease ------------------------------------------------------------------------------------------
def _plant_lock(tmp_path, host: str, age_seconds: float, pid: int = 1):
    lock = tmp_path / ".out_run"
    lock.write_text(json.dumps({"owner": "someone", "host": host, "pid": pid, "started": "earlier"}))
    then = time.time() - age_seconds
    os.utime(lock, (then, then))  # the fake clock: a heartbeat that stopped that long ago
    return lock


def test_a_live_lease_excludes_a_second_run_and_release_frees_it(spark, tmp_path):
    out = str(tmp_path / "out")
    with write.claim(spark, out) as lease:
        assert json.loads((tmp_path / ".out_run").read_text())["owner"] == lease.token
        with pytest.raises(write.LeaseHeld, match="another run is using") as held:
            write.Lease(spark, out).acquire()
        assert re.search(r"last \d+s ago; taken over once not refreshed for 180s, in 1\d\ds if", str(held.value))
        assert f"delete {tmp_path / '.out_run'} and run again" in str(held.value).replace("file:", "")
        lease.check()
    assert not (tmp_path / ".out_run").exists()
    write.Lease(spark, out).acquire().release()


def test_of_racing_lock_creators_exactly_one_wins_and_its_text_is_there_at_once(spark, tmp_path):
    """Two runs started together both passed Hadoop's local check-then-create; the lock must be one
    atomic step that also carries its content."""
    import threading

    for attempt in range(10):
        path = str(tmp_path / f"lock{attempt}")
        gate, won = threading.Barrier(6), []

        def race(i, gate=gate, path=path, won=won):
            gate.wait()
            if fs.create_new(spark, path, f"owner {i}"):
                won.append(i)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and (tmp_path / f"lock{attempt}").read_text() == f"owner {won[0]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"lock{i}" for i in range(10)]


def test_a_lease_from_another_host_is_taken_over_only_once_its_heartbeat_expired(spark, tmp_path):
    out = str(tmp_path / "out")
    _plant_lock(tmp_path, "other-host", age_seconds=write.STALE_SECONDS / 2)
    with pytest.raises(write.LeaseHeld, match="other-host"):
        write.Lease(spark, out).acquire()
    _plant_lock(tmp_path, "other-host", age_seconds=write.STALE_SECONDS + 5)
    lease = write.Lease(spark, out).acquire()
    assert json.loads((tmp_path / ".out_run").read_text())["owner"] == lease.token
    lease.release()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(spark, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    _plant_lock(tmp_path, socket.gethostname(), age_seconds=0, pid=int(dead))
    write.Lease(spark, str(tmp_path / "out")).acquire().release()


def test_a_run_whose_lease_was_taken_publishes_nothing_and_never_deletes_the_new_owners_lock(spark, tmp_path):
    out = str(tmp_path / "out")
    lease = write.Lease(spark, out).acquire()
    lease._stop.set()  # its heartbeat stops: a frozen driver
    _plant_lock(tmp_path, "other-host", age_seconds=0)  # ... whose lease another host took over
    with pytest.raises(write.LeaseLost, match="other-host"):
        write.publish_with(spark, out, lambda staging: fs.write_text(spark, staging + "/x", "x"), lease)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out_staging-*"))
    lease.release()
    assert json.loads((tmp_path / ".out_run").read_text())["owner"] == "someone"


def test_the_heartbeat_refreshes_the_lease(spark, tmp_path, monkeypatch):
    monkeypatch.setattr(write, "HEARTBEAT_SECONDS", 0.05)
    with write.claim(spark, str(tmp_path / "out")):
        first = json.loads((tmp_path / ".out_run").read_text())["beat"]
        time.sleep(1.0)
        assert json.loads((tmp_path / ".out_run").read_text())["beat"] > first


# ---- publishing ----------------------------------------------------------------------------------------
def test_the_next_run_restores_an_output_a_killed_swap_left_aside(spark, tmp_path):
    old = tmp_path / ".out_old-0123456789ab"
    old.mkdir()
    (old / "_SUCCESS").write_text("")
    (old / "metrics.json").write_text("{}")
    (tmp_path / ".out_staging-ba9876543210").mkdir()
    with write.claim(spark, str(tmp_path / "out")):
        pass
    assert (tmp_path / "out" / "metrics.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "url",
    [
        "s3a://bucket/models/als",
        "gs://bucket/m",
        "wasbs://c@acct.blob.core.windows.net/m",
        "abfss://c@acct.dfs.core.windows.net/m",
    ],
)
def test_outputs_on_stores_without_atomic_rename_are_refused(spark, url):
    with pytest.raises(InputError, match="no atomic rename"):
        write.check_output(spark, url)


# ---- fingerprinted checkpoints, through the job --------------------------------------------------------
def test_resume_continues_only_the_same_run(spark, tmp_path, monkeypatch, capsys):
    data = _ratings(tmp_path / "r.csv")
    out = tmp_path / "out"
    args = ["--input", str(data), "--output", str(out), *TINY]
    monkeypatch.setenv(FAIL_AT_ENV, "model")  # fails after the fit: its checkpoint stays
    assert train_job.main(args) == 1
    monkeypatch.delenv(FAIL_AT_ENV)
    assert list((tmp_path / ".out_checkpoint").glob("iter-*/state.json"))

    assert train_job.main([*args, "--resume", "--set", "model.reg=0.05"]) == 2
    assert "model.reg was 0.1, now 0.05" in capsys.readouterr().err
    assert train_job.main([*args, "--resume", "--set", "data.rating_range=[1,5]"]) == 2
    assert "data.rating_range was None, now [1.0, 5.0]" in capsys.readouterr().err
    _ratings(data, extra="u99,i1,3\n")  # the input changed
    assert train_job.main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "r.csv changed" in err and "Run without --resume" in err
    _ratings(data)
    os.utime(data, (time.time() - 7200, time.time() - 7200))  # same bytes, but touched: still refused
    assert train_job.main([*args, "--resume"]) == 2
    capsys.readouterr()


def test_resume_of_the_same_run_continues_and_a_fresh_run_clears_old_checkpoints(
    spark, tmp_path, monkeypatch, capsys, caplog
):
    data = _ratings(tmp_path / "r.csv")
    out = tmp_path / "out"
    args = ["--input", str(data), "--output", str(out), *TINY, "--set", "model.iterations=3"]
    planted = tmp_path / ".out_checkpoint" / "iter-00099"
    planted.mkdir(parents=True)
    (planted / "state.json").write_text("{}")
    monkeypatch.setenv(FAIL_AT_ENV, "model")
    assert train_job.main(args) == 1
    monkeypatch.delenv(FAIL_AT_ENV)
    assert not planted.exists()  # the run without --resume deleted it
    with caplog.at_level("INFO", logger="mf_spark"):
        assert train_job.main([*args, "--resume", "--set", "model.num_user_blocks=3"]) == 0
    assert "continuing after iteration 2" in caplog.text
    assert (out / "_SUCCESS").exists() and not (tmp_path / ".out_checkpoint").exists()


def test_fingerprint_differences_are_named(spark, tmp_path):
    data = _ratings(tmp_path / "r.csv")
    import pyarrow as pa

    cfg = config.load(None)
    a = checkpoint.fingerprint(spark, cfg, {"input": str(data)}, {"n_train": 5}, pa.array([1, 2]), pa.array(["a"]))
    b = checkpoint.fingerprint(
        spark,
        config.load(None, ["model.rank=7", "model.iterations=50", "model.day_bias_reg=3"]),
        {"input": str(data)},
        {"n_train": 6},
        pa.array([1, 3]),
        pa.array(["a"]),
    )
    assert checkpoint.differences(a, a) == []
    assert checkpoint.differences(a, b) == [
        "model.rank was 10, now 7",
        "n_train was 5, now 6",
        "the users ID map differs",
    ]
    assert checkpoint.differences(None, a) == ["the checkpoint has no run fingerprint (written by an older version)"]


# ---- large models ---------------------------------------------------------------------------------------
def test_factor_tables_use_64_bit_offsets(spark, tmp_path):
    import numpy as np
    import pyarrow as pa

    offsets = checkpoint.list_offsets(2**22, 1024)  # 2**32 values: beyond int32 offsets
    assert offsets.dtype == np.int64 and int(offsets[-1]) == 2**32
    t = checkpoint.factor_table(pa.array(["a", "b"]), np.ones((2, 3), np.float32), None)
    assert pa.types.is_large_list(t.schema.field("factors").type)
    fs.write_parquet(spark, str(tmp_path / "f"), t)
    back = spark.read.parquet(str(tmp_path / "f"))
    assert back.schema["factors"].dataType.simpleString() == "array<float>"
    F, _ = checkpoint.read_factor_table(back.toArrow(), 3, "f")
    assert F.shape == (2, 3)


# ---- input edge cases -----------------------------------------------------------------------------------
@pytest.mark.parametrize("front", ["driver", "spark"])
def test_null_tokens_and_rating_range_are_quarantined_alike_by_both_front_ends(spark, tmp_path, front):
    # The driver leaves CSV files with backslashes to Spark, so it gets \N in a tab-separated file.
    name, sep = ("r.tsv", "\t") if front == "driver" else ("r.csv", ",")
    data = _ratings(tmp_path / name, extra="NULL,i1,3\nu1,\\N,3\nu2,i3,null\nu3,i4,7\nu4,i5,-1\n")
    data.write_text(data.read_text().replace(",", sep))
    cfg = config.load(None, ["data.rating_range=[1,5]", "data.max_bad_fraction=0.5"]).data
    if front == "driver":
        cleaned = local_validate.clean(local_read.table(str(data), "auto", cfg), cfg, "explicit")
        reasons = cleaned.rejected.column("reason").to_pylist()
    else:
        cleaned = validate.clean(read.ratings(spark, str(data), "auto", cfg), cfg, "explicit")
        reasons = [r.reason for r in cleaned.rejected.orderBy("_row").collect()]
    assert reasons == [
        validate.MISSING_USER,
        validate.MISSING_ITEM,
        validate.MISSING_RATING,
        "rating is outside data.rating_range [1, 5]",
        "rating is outside data.rating_range [1, 5]",
    ]
    assert cleaned.counts["n_rejected"] == 5


def test_rows_with_another_field_count_are_quarantined_not_shifted(spark, tmp_path):
    data = _ratings(tmp_path / "r.csv", extra="u1,i1,2,5\nu2,i2\n")
    cfg = config.load(None, ["data.max_bad_fraction=0.5"]).data
    with pytest.raises(local_read.Unreadable):  # the driver leaves such files to Spark
        local_read.table(str(data), "auto", cfg)
    cleaned = validate.clean(read.ratings(spark, str(data), "auto", cfg), cfg, "explicit")
    bad = cleaned.rejected.orderBy("_row").collect()
    assert [r.reason for r in bad] == [read.field_count_reason(3, True)] * 2
    assert cleaned.counts["n_rejected"] == 2


def test_delimited_rows_with_another_field_count_are_quarantined(spark, tmp_path):
    data = tmp_path / "r.dat"
    data.write_text("".join(f"{u}::{j}::{1 + j % 5}::100\n" for u in range(20) for j in range(3)) + "1::2::3\n")
    cfg = config.load(None, ["data.max_bad_fraction=0.5"]).data
    cleaned = validate.clean(read.ratings(spark, str(data), "auto", cfg), cfg, "explicit")
    assert [r.reason for r in cleaned.rejected.collect()] == [read.field_count_reason(4, False)]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_folder_whose_files_disagree_on_their_columns_exits_2_naming_them(spark, tmp_path, kind, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "csv":
        _ratings(folder / "a.csv")
        (folder / "b.csv").write_text("item,user,rating\ni1,u1,3\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"user": [1, 2], "item": [1, 2], "rating": [1.0, 2.0]}), folder / "a.parquet")
        pq.write_table(pa.table({"user": [1], "movie": [3], "rating": [1.0]}), folder / "b.parquet")
    assert train_job.main(["--input", str(folder), "--output", str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "columns disagree" in err and f"b.{kind}" in err


def test_id_maps_beyond_their_text_limit_fail_early_with_a_clear_message(monkeypatch):
    import pyarrow as pa

    from mf_spark.data import index

    monkeypatch.setattr(index, "MAX_ID_TEXT_BYTES", 10)
    with pytest.raises(ValueError, match="at most 10 bytes of ID text"):
        index.IdMap(pa.array(["abcdef", "ghijkl"]), "user")
    index.IdMap(pa.array(["abc", "def"]), "user")


def test_explicit_ratings_without_a_range_report_it_and_warn_of_stray_negatives(spark, tmp_path, capsys):
    data = _ratings(tmp_path / "r.csv", extra="".join(f"u{u},i{u % 7 + 5},{-(u % 3)}\n" for u in range(10)))
    out = tmp_path / "out"
    assert train_job.main(["--input", str(data), "--output", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    lo, hi = metrics["observed_rating_range"]
    lines = capsys.readouterr().err.splitlines()
    assert any(f"explicit ratings range from {lo:g} to {hi:g}" in m for m in lines)
    warned = [m for m in lines if "<= 0" in m and "negative star rating" in m]
    assert hi == 5 and len(warned) == 1 and "data.rating_range" in warned[0]


def test_an_output_that_cannot_be_written_is_refused_in_one_line_naming_it(spark, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="afile is a file, expected a folder above the output"):
        write.check_output(spark, str(tmp_path / "afile" / "deeper" / "out"))

    def refused(spark, path, text=""):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(write.fs, "create_new", refused)
    with pytest.raises(InputError, match=r"cannot write in .*root \(Permission denied\); give an output"):
        write.Lease(spark, str(tmp_path / "root" / "out")).acquire()


# ---- the machine's errors ---------------------------------------------------------------------------------
def test_a_full_disk_under_a_checkpoint_leaves_the_one_before_and_no_half_folder(spark, tmp_path, monkeypatch):
    import numpy as np

    from mf_spark.core.types import Factors

    store = checkpoint.CheckpointStore(spark, str(tmp_path / "out"))
    f = Factors(np.ones((3, 2), np.float32), np.ones((4, 2), np.float32), None, None, 0.0)
    store.save(1, f, {})
    real = fs.write_bytes

    def full(spark, path, data):
        if "iter-00002" in path and "items" in path:
            raise OSError(28, "No space left on device", path)
        return real(spark, path, data)

    monkeypatch.setattr(fs, "write_bytes", full)
    with pytest.raises(OSError, match="No space left"):
        store.save(2, f, {})
    assert sorted(p.name for p in (tmp_path / ".out_checkpoint").iterdir()) == ["iter-00001"]
    assert store.latest()[0]["iteration"] == 1


def test_errors_of_the_machine_end_in_one_line_naming_the_cause():
    from mf_spark.run.cli import environment_cause

    java = RuntimeError(
        "An error occurred while calling o1422.parquet.\n: org.apache.spark.SparkException: Job aborted.\n"
        + "\tat org.apache.spark.sql.Dataset.x(Dataset.scala:1)\n" * 300
        + "Caused by: java.io.IOException: No space left on device\n\tat java.io.FileOutputStream.writeBytes"
    )
    assert environment_cause(java) == (
        1,
        "no space left on the device: Caused by: java.io.IOException: No space left on device",
    )
    try:
        raise InputError("wrapped") from PermissionError(13, "Permission denied", "/data/out/model.json")
    except InputError as e:
        code, line = environment_cause(e)
        assert code == 2 and line.startswith("permission denied (/data/out/model.json): ")
    assert environment_cause(ValueError("a bug")) is None


def test_a_reader_between_the_swaps_renames_reads_the_previous_output(spark, tmp_path, capsys):
    """The moment a publish has moved the old output aside and not yet renamed the new one in (or a
    run killed there): load_model and the recommend job read the version set aside."""
    from jobs import recommend
    from mf_spark.model.factors import load_model

    out = tmp_path / "out"
    assert train_job.main(["--input", str(_ratings(tmp_path / "r.csv")), "--output", str(out), *TINY]) == 0
    want = load_model(str(out), spark)
    out.rename(tmp_path / ".out_old-0123456789ab")
    got = load_model(str(out), spark)
    assert got.users.ids.equals(want.users.ids) and (got.factors.X == want.factors.X).all()
    assert "is being replaced; reading its previous version from" in capsys.readouterr().err
    assert recommend.main(["--model", str(out), "--output", str(tmp_path / "recs"), "--n", "2"]) == 0
    (tmp_path / ".out_old-0123456789ab" / "_SUCCESS").unlink()  # an incomplete one is never read
    with pytest.raises(Exception, match="is not a model folder"):
        load_model(str(out), spark)


@pytest.mark.parametrize("route", ["hadoop", "task"])
def test_a_content_fingerprint_notices_an_edit_that_keeps_size_and_time(spark, tmp_path, monkeypatch, route):
    """data.fingerprint = content: --resume refuses an input edited in place with its size and time kept
    (the stat fingerprint, the default, cannot see it); the same through a task, as on Spark Connect."""
    import pyarrow as pa

    if route == "task":
        monkeypatch.setattr(fs, "is_connect", lambda spark: True)
    data = tmp_path / "r.csv"
    data.write_text("user,item,rating\nu1,i1,3\nu2,i2,4\n")
    ids = pa.array(["u1", "u2"])

    def prints(kind):
        cfg = config.load(None, [f"data.fingerprint={kind}"])
        return checkpoint.fingerprint(spark, cfg, {"input": str(data)}, {"n_read": 2}, ids, ids)

    before = {kind: prints(kind) for kind in ("stat", "content")}
    stat = os.stat(data)
    data.write_text("user,item,rating\nu1,i1,5\nu2,i2,4\n")  # one digit: the same size
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoint.differences(before["stat"], prints("stat")) == []
    changed = checkpoint.differences(before["content"], prints("content"))
    assert len(changed) == 1 and "r.csv changed" in changed[0] and "its content differs" in changed[0]
    assert checkpoint.differences(before["stat"], prints("content")) == []  # only what both recorded
