"""Config: defaults, TOML files, --set overrides typed by the field, errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mf_spark.core import config
from mf_spark.core.config import DataConfig, EvalConfig, ModelConfig, RecommendConfig, RunConfig, SplitConfig
from mf_spark.core.errors import ConfigError

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "conf" / "default.toml"


def write(tmp_path, text, name="run.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---- defaults -----------------------------------------------------------------------------------


def test_builtin_defaults():
    cfg = config.load(None)
    assert cfg == RunConfig()
    m = cfg.model
    assert (m.kind, m.rank, m.iterations, m.reg, m.reg_scaling, m.biases) == ("explicit", 10, 10, 0.1, "count", False)
    assert (m.alpha, m.confidence, m.unobserved_weight, m.nonnegative, m.seed) == (1.0, "linear", 1.0, False, 0)
    assert (m.num_user_blocks, m.num_item_blocks, m.strategy, m.checkpoint_interval) == (0, 0, "auto", 5)
    assert (cfg.split.method, cfg.split.test_fraction, cfg.split.seed) == ("random", 0.2, 42)
    d = cfg.data
    assert (d.user_col, d.item_col, d.rating_col, d.timestamp_col) == ("", "", "", "")
    assert (d.max_bad_fraction, d.duplicates) == (0.01, "")
    assert (cfg.recommend.top_n, cfg.recommend.exclude_seen) == (10, True)
    assert cfg.eval.k == 10 and cfg.eval.relevant_threshold is None
    assert cfg.spark == {}


def test_every_design_key_exists():
    keys = {f"{s}.{f.name}" for s, cls in config.SECTIONS.items() for f in dataclasses.fields(cls)}
    design = """model.kind model.rank model.iterations model.reg model.reg_scaling model.biases model.alpha
        model.confidence model.unobserved_weight model.nonnegative model.seed model.num_user_blocks
        model.num_item_blocks model.strategy model.checkpoint_interval split.method split.test_fraction
        split.seed data.user_col data.item_col data.rating_col data.timestamp_col data.max_bad_fraction
        data.duplicates recommend.top_n recommend.exclude_seen eval.k""".split()
    assert set(design) <= keys


def test_config_is_frozen():
    cfg = config.load(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.rank = 3


def test_duplicates_policy_follows_the_kind():
    assert DataConfig().duplicates_policy("explicit") == "mean"
    assert DataConfig().duplicates_policy("implicit") == "sum"
    assert DataConfig(duplicates="last").duplicates_policy("implicit") == "last"


def test_to_dict_round_trips():
    cfg = config.load(None, ["model.rank=4", "spark.spark.x=1"])
    d = cfg.to_dict()
    assert d["model"]["rank"] == 4 and d["spark"] == {"spark.x": "1"}
    assert config.from_dict({k: v for k, v in d.items()}) == cfg


def test_default_toml_equals_builtin_defaults():
    if not DEFAULT_TOML.exists():
        pytest.skip("conf/default.toml does not exist yet")
    assert config.load(DEFAULT_TOML) == config.load(None)


# ---- TOML files ---------------------------------------------------------------------------------


def test_load_toml_file(tmp_path):
    p = write(
        tmp_path,
        """
[model]
kind = "implicit"
rank = 32
reg = 1          # an integer is accepted for a float
biases = true
confidence = "log"

[split]
method = "per_user"
test_fraction = 0.25

[data]
user_col = 0     # a bare integer position for a column
item_col = "movieId"
max_bad_fraction = 0

[recommend]
exclude_seen = false

[eval]
k = 5
relevant_threshold = 4
""",
    )
    cfg = config.load(p)
    assert cfg.model == ModelConfig(kind="implicit", rank=32, reg=1.0, biases=True, confidence="log")
    assert isinstance(cfg.model.reg, float)
    assert cfg.split == SplitConfig(method="per_user", test_fraction=0.25)
    assert cfg.data == DataConfig(user_col="0", item_col="movieId", max_bad_fraction=0.0)
    assert cfg.recommend == RecommendConfig(exclude_seen=False)
    assert cfg.eval == EvalConfig(k=5, relevant_threshold=4.0)
    assert isinstance(cfg.eval.relevant_threshold, float)


def test_load_accepts_str_and_path(tmp_path):
    p = write(tmp_path, "[model]\nrank = 3\n")
    assert config.load(str(p)) == config.load(p)
    assert config.load(str(p)).model.rank == 3


def test_empty_file_gives_defaults(tmp_path):
    assert config.load(write(tmp_path, "")) == RunConfig()


def test_spark_section_is_passed_through_as_strings(tmp_path):
    p = write(
        tmp_path,
        """
[spark]
"spark.sql.shuffle.partitions" = 16
"spark.executor.memory" = "4g"
"spark.sql.adaptive.enabled" = false
"spark.memory.fraction" = 0.5
""",
    )
    cfg = config.load(p, ["spark.spark.executor.memory=8g", "spark.spark.driver.cores=2"])
    assert cfg.spark == {
        "spark.sql.shuffle.partitions": "16",
        "spark.executor.memory": "8g",
        "spark.sql.adaptive.enabled": "false",
        "spark.memory.fraction": "0.5",
        "spark.driver.cores": "2",
    }


def test_spark_section_with_dotted_keys(tmp_path):
    p = write(tmp_path, '[spark]\nspark.executor.memory = "4g"\nspark.sql.shuffle.partitions = 8\n')
    try:
        cfg = config.load(p)
    except ConfigError as exc:  # refusing nested tables is an acceptable answer too
        assert "spark" in str(exc)
        return
    assert cfg.spark == {"spark.executor.memory": "4g", "spark.sql.shuffle.partitions": "8"}


def test_spark_section_must_be_a_table(tmp_path):
    with pytest.raises(ConfigError, match=r"\[spark\]"):
        config.load(write(tmp_path, 'spark = "x"\n'))


# ---- --set --------------------------------------------------------------------------------------


def test_set_parses_into_the_declared_types():
    cfg = config.load(
        None,
        [
            "model.rank=32",
            "model.reg=0.05",
            "model.biases=true",
            "model.kind=implicit",
            "split.test_fraction=0.1",
            "recommend.exclude_seen=False",
            "data.user_col=userId",
            "model.seed=-3",
            "eval.relevant_threshold=3.5",
            "data.duplicates=last",
        ],
    )
    assert cfg.model.rank == 32 and type(cfg.model.rank) is int
    assert cfg.model.reg == 0.05 and type(cfg.model.reg) is float
    assert cfg.model.biases is True and cfg.recommend.exclude_seen is False
    assert cfg.model.kind == "implicit" and cfg.model.seed == -3
    assert cfg.split.test_fraction == 0.1 and cfg.data.user_col == "userId"
    assert cfg.eval.relevant_threshold == 3.5 and cfg.data.duplicates == "last"


def test_set_float_accepts_an_integer_text():
    cfg = config.load(None, ["model.reg=2", "model.alpha=40"])
    assert cfg.model.reg == 2.0 and type(cfg.model.reg) is float and cfg.model.alpha == 40.0


@pytest.mark.parametrize("text", ["none", "None", "null", ""])
def test_set_optional_to_none(tmp_path, text):
    p = write(tmp_path, "[eval]\nrelevant_threshold = 4.0\n")
    assert config.load(p).eval.relevant_threshold == 4.0
    assert config.load(p, [f"eval.relevant_threshold={text}"]).eval.relevant_threshold is None


def test_set_tolerates_whitespace_and_equals_in_value():
    cfg = config.load(None, [" model.rank = 7 ", "spark.spark.driver.extraJavaOptions=-Da=b"])
    assert cfg.model.rank == 7
    assert cfg.spark == {"spark.driver.extraJavaOptions": "-Da=b"}


def test_set_overrides_file_and_later_set_wins(tmp_path):
    p = write(tmp_path, "[model]\nrank = 5\nreg = 0.3\n")
    cfg = config.load(p, ["model.rank=6", "model.rank=8"])
    assert cfg.model.rank == 8 and cfg.model.reg == 0.3


def test_set_string_field_keeps_text():
    assert config.load(None, ["data.item_col=1"]).data.item_col == "1"


def test_parse_set():
    assert config.parse_set("model.rank=32") == ("model", "rank", "32")
    assert config.parse_set("spark.spark.a.b=c=d") == ("spark", "spark.a.b", "c=d")


# ---- errors -------------------------------------------------------------------------------------


def error_of(path=None, sets=()):
    with pytest.raises(ConfigError) as info:
        config.load(path, list(sets))
    return str(info.value)


@pytest.mark.parametrize(
    "sets, key",
    [
        (["model.rank=0"], "model.rank"),
        (["model.rank=-2"], "model.rank"),
        (["model.reg=-0.1"], "model.reg"),
        (["model.reg=nan"], "model.reg"),
        (["model.iterations=0"], "model.iterations"),
        (["model.alpha=-1"], "model.alpha"),
        (["model.epsilon=0"], "model.epsilon"),
        (["model.unobserved_weight=-1"], "model.unobserved_weight"),
        (["model.num_user_blocks=-1"], "model.num_user_blocks"),
        (["model.num_item_blocks=-1"], "model.num_item_blocks"),
        (["model.checkpoint_interval=-1"], "model.checkpoint_interval"),
        (["model.broadcast_budget_mb=-1"], "model.broadcast_budget_mb"),
        (["model.cg_steps=0"], "model.cg_steps"),
        (["model.history_prior=-0.1"], "model.history_prior"),
        (["model.day_factor_reg=-1"], "model.day_factor_reg"),
        (["model.history_prior=0.2", "model.nonnegative=true"], "model.history_prior"),
        (["split.test_fraction=0"], "split.test_fraction"),
        (["split.test_fraction=1"], "split.test_fraction"),
        (["split.test_fraction=1.5"], "split.test_fraction"),
        (["eval.k=0"], "eval.k"),
        (["recommend.top_n=0"], "recommend.top_n"),
        (["data.max_bad_fraction=1.01"], "data.max_bad_fraction"),
        (["data.max_bad_fraction=-0.1"], "data.max_bad_fraction"),
    ],
)
def test_out_of_range_names_the_key(sets, key):
    msg = error_of(sets=sets)
    assert key in msg and sets[0].split("=")[1] in msg


@pytest.mark.parametrize(
    "toml, key",
    [
        ("[model]\nrank = 0\n", "model.rank"),
        ("[model]\nreg = -1.0\n", "model.reg"),
        ("[model]\niterations = 0\n", "model.iterations"),
        ("[split]\ntest_fraction = 0.0\n", "split.test_fraction"),
        ("[split]\ntest_fraction = 1.0\n", "split.test_fraction"),
        ("[eval]\nk = 0\n", "eval.k"),
    ],
)
def test_out_of_range_in_file_names_the_key(tmp_path, toml, key):
    assert key in error_of(write(tmp_path, toml))


@pytest.mark.parametrize(
    "toml, key",
    [
        ('[model]\nrank = "ten"\n', "model.rank"),
        ("[model]\nrank = 10.0\n", "model.rank"),
        ("[model]\nrank = true\n", "model.rank"),
        ('[model]\nreg = "0.1"\n', "model.reg"),
        ("[model]\nreg = true\n", "model.reg"),
        ('[model]\nbiases = "yes"\n', "model.biases"),
        ("[model]\nbiases = 1\n", "model.biases"),
        ("[data]\nuser_col = 1.5\n", "data.user_col"),
        ("[data]\nuser_col = [1]\n", "data.user_col"),
        ('[eval]\nrelevant_threshold = "high"\n', "eval.relevant_threshold"),
    ],
)
def test_wrong_type_in_file_names_the_key(tmp_path, toml, key):
    msg = error_of(write(tmp_path, toml))
    assert key in msg


@pytest.mark.parametrize(
    "item, key",
    [
        ("model.rank=ten", "model.rank"),
        ("model.rank=3.5", "model.rank"),
        ("model.rank=", "model.rank"),
        ("model.reg=abc", "model.reg"),
        ("model.biases=yes", "model.biases"),
        ("model.biases=1", "model.biases"),
        ("eval.relevant_threshold=high", "eval.relevant_threshold"),
    ],
)
def test_wrong_type_in_set_names_the_key(item, key):
    msg = error_of(sets=[item])
    assert key in msg and repr(item.split("=")[1]) in msg


@pytest.mark.parametrize(
    "sets, key, value",
    [
        (["model.kind=hybrid"], "model.kind", "hybrid"),
        (["model.kind=Explicit"], "model.kind", "Explicit"),
        (["model.strategy=shuffle"], "model.strategy", "shuffle"),
        (["model.solver=lu"], "model.solver", "lu"),
        (["model.reg_scaling=sqrt"], "model.reg_scaling", "sqrt"),
        (["model.confidence=exp"], "model.confidence", "exp"),
        (["split.method=kfold"], "split.method", "kfold"),
        (["data.duplicates=first"], "data.duplicates", "first"),
    ],
)
def test_bad_literal_names_the_key_and_choices(sets, key, value):
    msg = error_of(sets=sets)
    assert key in msg and value in msg


def test_bad_literal_in_file_lists_the_choices(tmp_path):
    msg = error_of(write(tmp_path, '[model]\nkind = "hybrid"\n'))
    assert "model.kind" in msg and "'explicit'" in msg and "'implicit'" in msg


def test_unknown_key_names_the_key(tmp_path):
    msg = error_of(write(tmp_path, "[model]\nrnak = 3\n"))
    assert "model.rnak" in msg and "rank" in msg  # lists the known keys
    assert "model.rnak" in error_of(sets=["model.rnak=3"])


def test_unknown_section_names_the_section(tmp_path):
    p = write(tmp_path, "[modle]\nrank = 3\n")
    msg = error_of(p)
    assert "modle" in msg and str(p) in msg
    msg = error_of(sets=["modle.rank=3"])
    assert "modle" in msg and "model" in msg


def test_section_that_is_not_a_table(tmp_path):
    assert "[model]" in error_of(write(tmp_path, "model = 3\n"))


@pytest.mark.parametrize("item", ["model.rank", "rank=3", "model.=3", "=3", ""])
def test_malformed_set(item):
    msg = error_of(sets=[item])
    assert "section.key=value" in msg and repr(item) in msg


def test_set_with_empty_section():
    assert repr(".rank=3") in error_of(sets=[".rank=3"])


def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope.toml"
    msg = error_of(p)
    assert str(p) in msg and "does not exist" in msg


def test_invalid_toml_names_the_path(tmp_path):
    p = write(tmp_path, "[model\nrank = = 3\n")
    msg = error_of(p)
    assert str(p) in msg and "TOML" in msg


def test_a_directory_is_not_a_config_file(tmp_path):
    assert str(tmp_path) in error_of(tmp_path)


def test_config_errors_are_usage_errors_for_the_jobs():
    from mf_spark.core.errors import exit_code

    with pytest.raises(ConfigError) as info:
        config.load(None, ["model.rank=0"])
    assert exit_code(info.value) == 2


@pytest.mark.parametrize(
    "extra, steps",
    [
        ({"rank": 10}, 0),
        ({"rank": config.CG_FROM_RANK}, 3),
        ({"rank": 64, "cg_steps": 5}, 5),
        ({"rank": 64, "solver": "exact"}, 0),
        ({"rank": 4, "solver": "cg"}, 3),
        ({"rank": 64, "solver": "cg", "nonnegative": True}, 0),  # projected solves need the k x k system
    ],
)
def test_solver_picks_conjugate_gradients_at_high_rank(extra, steps):
    assert config.ModelConfig(**extra).cg_steps_for() == steps


def test_the_readme_table_and_default_toml_name_every_key_and_only_those():
    """Each hyperparameter is declared once, in the config dataclasses; conf/default.toml and the
    README's configuration table must follow them (a key added, renamed or removed shows here)."""
    import re
    import tomllib

    defaults = {
        f"{section}.{key}": v
        for section, body in config.load(None).to_dict().items()
        if section != "spark"
        for key, v in body.items()
    }
    declared = set(defaults)
    text = DEFAULT_TOML.read_text()
    in_toml = {f"{s}.{k}" for s, body in tomllib.loads(text).items() if s != "spark" for k in body}
    unset = {k for k, v in defaults.items() if v is None}  # TOML has no null: shown commented out
    assert in_toml == declared - unset
    assert all(re.search(rf"^# {k.split('.')[1]} = ", text, re.M) for k in unset)


def test_default_toml_and_the_readme_table_are_made_from_the_declarations():
    """Each key's default and doc are declared once (config.setting); conf/default.toml and the
    README's table are what scripts/config_docs.py makes of them (run it after changing a key)."""
    import importlib.util

    root = DEFAULT_TOML.parent.parent
    spec = importlib.util.spec_from_file_location("config_docs", root / "scripts" / "config_docs.py")
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    assert DEFAULT_TOML.read_text() == config.defaults_toml(), "run scripts/config_docs.py"
    readme = (root / "README.md").read_text()
    assert docs.readme_with_table(readme) == readme, "run scripts/config_docs.py"


def test_every_key_has_a_doc_and_the_docs_reach_the_estimator():
    from mf_spark import ml

    for cls in config.SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert len(f.metadata["doc"]) > 10, f"{cls.__name__}.{f.name}"
    assert config.doc_of(config.ModelConfig, "reg_exponent") in ml.ALS().getParam("regExponent").doc


def test_a_declared_rule_holds_for_sections_built_in_python():
    with pytest.raises(ConfigError, match=r"config key tune.eta: got 1, expected an integer >= 2"):
        config.TuneConfig(eta=1)
    with pytest.raises(ConfigError, match=r"config key model.alpha: got nan, expected a finite number"):
        config.ModelConfig(alpha=float("nan"))


def test_the_solvers_defaults_are_the_configs():
    """kernels.solve.SolveSpec cannot import the config (kernels import numpy only); its defaults are
    those solve_spec derives from ModelConfig's, so a default changed in one place shows here."""
    from mf_spark.als.halfstep import solve_spec
    from mf_spark.core.config import ModelConfig
    from mf_spark.kernels.solve import SolveSpec

    assert SolveSpec() == solve_spec(ModelConfig(), 0.0)
    assert SolveSpec(kind="implicit") == solve_spec(ModelConfig(kind="implicit"), 0.0)


@pytest.mark.parametrize(
    "item",
    [
        "model.reg=inf",
        "model.alpha=nan",
        "model.unobserved_weight=-inf",
        "model.epsilon=NaN",
        "split.test_fraction=nan",
        "data.max_bad_fraction=inf",
    ],
)
def test_settings_must_be_finite_numbers(item):
    with pytest.raises(ConfigError, match="finite"):
        config.load(None, [item])


def test_settings_given_in_python_must_be_finite_too():
    from mf_spark.core.config import ModelConfig

    for key in ("reg", "alpha", "epsilon", "unobserved_weight"):
        with pytest.raises(ConfigError, match="finite"):
            ModelConfig(**{key: float("inf")})


def test_strict_json_turns_nan_and_infinities_into_null():
    from mf_spark.core.fs import strict_json

    assert strict_json({"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "x"}) == {
        "a": None,
        "b": [1.0, None, {"c": None}],
        "d": "x",
    }


def test_sections_built_in_python_are_held_to_the_same_choices():
    from mf_spark.core.config import DataConfig, ModelConfig, SplitConfig

    with pytest.raises(
        ConfigError, match="config key model.solver: got 'newton', expected one of 'auto', 'exact', 'cg'"
    ):
        ModelConfig(solver="newton")
    with pytest.raises(ConfigError, match="split.method"):
        SplitConfig(method="by_week")
    with pytest.raises(ConfigError, match="data.duplicates"):
        DataConfig(duplicates="first")
    assert DataConfig(duplicates="").duplicates == ""
