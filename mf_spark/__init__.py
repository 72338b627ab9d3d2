"""mf_spark: matrix factorization (ALS, weighted ALS) for recommender systems on Spark."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import mf_spark` must not start or need Spark
    if name in ("load_model", "FactorModel"):
        from mf_spark.model import factors as model

        return getattr(model, name)
    if name == "fit":
        from mf_spark.als.loop import fit

        return fit
    if name in ("ALS", "ALSModel"):
        from mf_spark import ml

        return getattr(ml, name)
    raise AttributeError(f"module 'mf_spark' has no attribute {name!r}")


__all__ = ["__version__", "load_model", "FactorModel", "fit", "ALS", "ALSModel"]
