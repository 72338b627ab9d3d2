"""Session defaults, and the Arrow batch setting a fit applies to a caller's session."""
from __future__ import annotations

from mf_spark import session


def test_row_batched_arrow_sets_and_restores(spark):
    key = session.ARROW_BYTES_KEY
    before = spark.conf.get(key, None)      # jobs tested earlier may have started the session with it
    spark.conf.unset(key)
    try:
        with session.row_batched_arrow(spark):
            assert spark.conf.get(key) == session.ARROW_BYTES_UNBOUNDED
        assert spark.conf.get(key, None) is None
    finally:
        if before is not None:
            spark.conf.set(key, before)


def test_row_batched_arrow_keeps_a_value_the_session_chose(spark):
    key = session.ARROW_BYTES_KEY
    before = spark.conf.get(key, None)
    spark.conf.set(key, "1048576")
    try:
        with session.row_batched_arrow(spark):
            assert spark.conf.get(key) == "1048576"
        assert spark.conf.get(key) == "1048576"
    finally:
        spark.conf.unset(key)
        if before is not None:
            spark.conf.set(key, before)


def test_started_sessions_cut_arrow_batches_by_rows_only():
    assert session.DEFAULTS[session.ARROW_BYTES_KEY] == session.ARROW_BYTES_UNBOUNDED
