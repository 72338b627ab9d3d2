"""PySpark's own examples of pyspark.ml.recommendation.ALS (its docstring's doctest, printed numbers
included), run against mf_spark.ml's ALS and ALSModel on any session, classic or Spark Connect."""

from __future__ import annotations

import doctest


def run_als_examples(spark, folder: str) -> tuple[int, int]:
    """(failed, attempted) examples; the failures are printed, as doctest prints them."""
    import pyspark.ml.recommendation as mllib

    from mf_spark.ml import ALS, ALSModel

    names = {"spark": spark, "ALS": ALS, "ALSModel": ALSModel, "temp_path": folder}
    test = doctest.DocTestParser().get_doctest(mllib.ALS.__doc__, names, "pyspark.ml.recommendation.ALS", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    return runner.summarize(verbose=False)[:2]
