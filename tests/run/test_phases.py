"""PhaseClock: seconds and Spark jobs per phase, in order, adding up to the total."""

from __future__ import annotations

import time

from mf_spark.run.phases import PhaseClock


def test_phases_in_order_add_up_to_the_total():
    clock = PhaseClock()
    with clock.phase("b"):
        time.sleep(0.05)
    time.sleep(0.02)  # outside any phase: "other"
    with clock.phase("a"):
        time.sleep(0.01)
    with clock.phase("b"):  # a repeated name adds up
        time.sleep(0.01)
    r = clock.report()
    assert list(r["timings"]) == ["b", "a", "other", "total"]
    assert r["timings"]["b"] >= 0.06 and r["timings"]["other"] >= 0.02
    assert abs(sum(v for k, v in r["timings"].items() if k != "total") - r["timings"]["total"]) < 1e-3
    assert r["spark_jobs"] == {"b": 0, "a": 0}  # no session attached: nothing counted


def test_a_running_phase_is_reported_up_to_now():
    clock = PhaseClock()
    with clock.phase("write"):
        time.sleep(0.02)
        r = clock.report()
    assert r["timings"]["write"] >= 0.02 and "write" in r["spark_jobs"]


def test_spark_jobs_are_counted_per_phase_and_the_callers_group_kept(spark):
    sc = spark.sparkContext
    sc.setJobGroup("callers-group", "the caller's")
    clock = PhaseClock().attach(spark)
    with clock.phase("two"):
        spark.range(10).count()
        spark.range(5).collect()
    with clock.phase("none"):
        pass
    jobs = clock.report()["spark_jobs"]
    assert list(jobs) == ["two", "none"] and jobs["two"] >= 2 and jobs["none"] == 0
    assert sc.getLocalProperty("spark.jobGroup.id") == "callers-group"
    sc.setLocalProperty("spark.jobGroup.id", None)
    sc.setLocalProperty("spark.job.description", None)
