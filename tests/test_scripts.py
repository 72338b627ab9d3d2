"""scripts/make_synthetic.py: any size finishes, with exactly the pairs asked for, the same every time."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_synthetic.py"


@pytest.fixture(scope="module")
def synthetic():
    spec = importlib.util.spec_from_file_location("make_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n", [1, 50, 2000, 30000])
@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_small_sizes_finish_with_distinct_pairs_at_most_the_density_cap(synthetic, n, kind):
    # Below ~100k ratings the power-law shape alone has fewer pairs than ratings (2000 ratings:
    # 20 x 60 = 1200 pairs), and drawing distinct pairs never finished.
    table = synthetic.generate(n, kind)
    user, item = table.column("user").to_numpy(), table.column("item").to_numpy()
    rating = table.column("rating").to_numpy()
    assert table.num_rows == n
    assert np.unique(user * (item.max() + 1) + item).size == n
    n_users, n_items = synthetic.shape(n)
    assert user.max() < n_users and item.max() < n_items
    assert n <= synthetic.MAX_DENSITY * n_users * n_items + 1
    if kind == "explicit":
        assert set(np.unique(rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    else:
        assert rating.min() >= 1 and np.all(rating == np.rint(rating))


def test_large_shapes_follow_movielens_and_are_not_widened(synthetic):
    assert synthetic.shape(1_000_000) == (6040, 3700)
    users, items = synthetic.shape(20_000_000)
    assert 130_000 < users < 145_000 and 25_000 < items < 28_000


def test_same_arguments_same_table_and_bad_sizes_refused(synthetic):
    assert synthetic.generate(3000, "implicit", seed=3).equals(synthetic.generate(3000, "implicit", seed=3))
    assert not synthetic.generate(3000, "implicit", seed=3).equals(synthetic.generate(3000, "implicit", seed=4))
    with pytest.raises(ValueError, match="at least 1"):
        synthetic.generate(0, "explicit")
