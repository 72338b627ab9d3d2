"""Session defaults, and the Arrow batch settings a fit applies to a caller's session."""

from __future__ import annotations

import sys

import pytest

from mf_spark.core import session

FIT_SETTINGS = {
    session.ARROW_BYTES_KEY: session.ARROW_BYTES_UNBOUNDED,
    session.ARROW_ROWS_KEY: str(session.FIT_BATCH_ROWS),
}


@pytest.fixture
def unset(spark):
    """The session without either setting; whatever it had is put back afterwards."""
    before = {key: spark.conf.get(key, None) for key in FIT_SETTINGS}
    for key in FIT_SETTINGS:
        spark.conf.unset(key)
    yield spark
    for key, value in before.items():
        spark.conf.unset(key)
        if value is not None:
            spark.conf.set(key, value)


def test_row_batched_arrow_sets_and_restores(unset):
    with session.row_batched_arrow(unset):
        assert {key: unset.conf.get(key) for key in FIT_SETTINGS} == FIT_SETTINGS
    assert all(unset.conf.get(key, None) is None for key in FIT_SETTINGS)


@pytest.mark.parametrize("key", sorted(FIT_SETTINGS))
def test_row_batched_arrow_keeps_a_value_the_session_chose(unset, key):
    unset.conf.set(key, "4096")
    with session.row_batched_arrow(unset):
        assert unset.conf.get(key) == "4096"
        other = next(k for k in FIT_SETTINGS if k != key)
        assert unset.conf.get(other) == FIT_SETTINGS[other]
    assert unset.conf.get(key) == "4096"
    assert unset.conf.get(other, None) is None


def test_started_sessions_cut_arrow_batches_by_rows_only():
    assert session.DEFAULTS[session.ARROW_BYTES_KEY] == session.ARROW_BYTES_UNBOUNDED


def test_start_leaves_a_running_sessions_shuffle_partitions(spark):
    before = spark.conf.get(session.SHUFFLE_PARTITIONS_KEY)
    assert session.start("mf_spark-tests-again") is spark
    assert spark.conf.get(session.SHUFFLE_PARTITIONS_KEY) == before


def test_a_worker_python_without_pyarrow_is_named_with_what_to_set(spark, tmp_path, monkeypatch):
    from mf_spark.core.errors import ConfigError

    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pyarrow'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(session, "_WORKER_PYTHONS", {})
    monkeypatch.setattr(spark.sparkContext, "pythonExec", str(fake))
    with pytest.raises(
        ConfigError, match="cannot import numpy and pyarrow .*No module named 'pyarrow'.*PYSPARK_PYTHON="
    ):
        session.check_worker_python(spark)
    monkeypatch.setattr(spark.sparkContext, "pythonExec", sys.executable)
    session.check_worker_python(spark)  # the suite's own Python serves
