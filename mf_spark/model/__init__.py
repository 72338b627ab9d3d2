"""The fitted model: factors, ID maps and persistence (factors), top-N lists (topn),
similar items and users (similar)."""

from mf_spark.model.factors import FactorModel, Scorer, load_model
from mf_spark.model.similar import similar_items, similar_users

__all__ = ["FactorModel", "Scorer", "load_model", "similar_items", "similar_users"]
