from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cvr.data.implicit import (
    ImplicitGenerator,
    ImplicitSpec,
    _as_spec,
    build_implicit_store,
    generate,
)
from cvr.metrics import binary_metrics

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def config_kwargs(name: str, **overrides) -> dict:
    """A data config's generator keys (no Hydra: its interpolations are set here)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    for key in ("_target_", "_convert_", "cache_root", "seed", "name"):
        cfg.pop(key)
    return {**cfg, **overrides}


def spec_of(name: str, **overrides) -> ImplicitSpec:
    kw = config_kwargs(name, **overrides)
    return _as_spec(kw.pop("fields"), kw)


def test_frappe_config_has_frappes_shape_and_scales_with_rows():
    spec = spec_of("synthetic_implicit")
    assert spec.cardinalities() == [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]
    assert sum(spec.cardinalities()) == 5382
    ml = spec_of("synthetic_implicit_ml", rows=200_686)  # a tenth of the full 2M
    assert ml.cardinalities() == pytest.approx([1704.5, 2374.3, 4965.7], abs=0.6)


def test_negatives_keep_everything_but_a_uniform_target():
    spec = spec_of("synthetic_implicit", rows=30_000, seed=3)
    gen = ImplicitGenerator(spec)
    ids, labels = gen.chunk(0, 4000)
    pos, neg = ids[:4000], ids[4000:]
    assert labels[:4000].all() and not labels[4000:].any() and len(neg) == 8000
    kept = np.repeat(pos, 2, axis=0)
    others = [f for f in range(ids.shape[1]) if f != gen.target]
    np.testing.assert_array_equal(neg[:, others], kept[:, others])
    n_items = gen.cardinalities[gen.target]
    assert neg[:, gen.target].min() >= 1 and neg[:, gen.target].max() <= n_items
    # positives are popularity-skewed, negatives uniform: the top tenth of items by rank holds
    # far more than a tenth of positives and about a tenth of negatives
    top = n_items // 10
    assert (pos[:, gen.target] <= top).mean() > 0.3
    assert (neg[:, gen.target] <= top).mean() == pytest.approx(0.1, abs=0.02)
    # derived fields are functions of their parent (country of the city)
    city, country = spec.names.index("city"), spec.names.index("country")
    pairs = np.unique(ids[:, [city, country]], axis=0)
    assert len(pairs) == len(np.unique(ids[:, city]))


def test_seeded_shuffled_split_and_a_third_positive():
    spec = spec_of("synthetic_implicit_ml", rows=30_000, seed=1)
    a, b = generate(spec), generate(spec)
    for split in ("train", "val", "test"):
        for x, y in zip(a[split], b[split], strict=True):
            np.testing.assert_array_equal(x, y)
    other = generate(spec_of("synthetic_implicit_ml", rows=30_000, seed=2))
    assert not np.array_equal(a["train"][0], other["train"][0])
    sizes = {s: len(v[0]) for s, v in a.items()}
    assert sizes == {"train": 21_000, "val": 6_000, "test": 3_000}
    labels = np.concatenate([v[1] for v in a.values()])
    assert labels.mean() == pytest.approx(1 / 3, abs=1e-4)
    # shuffled: a positive's negatives are not its neighbours
    assert abs(np.corrcoef(a["train"][1][:-1], a["train"][1][1:])[0, 1]) < 0.05


def test_true_probability_is_calibrated_and_in_the_high_auc_regime():
    spec = spec_of("synthetic_implicit", rows=60_000)
    splits = generate(spec)
    ids, labels, probs = (np.concatenate([s[i] for s in splits.values()]) for i in range(3))
    # calibrated: in each decile of the true probability the positive rate matches its mean
    edges = np.quantile(probs, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, 9)
    for b in range(10):
        assert labels[bins == b].mean() == pytest.approx(probs[bins == b].mean(), abs=0.03)
    oracle = binary_metrics(labels, probs)["auc"]
    target = ImplicitGenerator(spec).target
    popularity = np.bincount(ids[labels == 1, target], minlength=4083)[ids[:, target]]
    pop_auc = binary_metrics(labels, popularity / popularity.max())["auc"]
    assert oracle > 0.95 and 0.8 < pop_auc < oracle - 0.01  # interactions carry signal


def test_store_is_cached_and_its_schema_has_sides(tmp_path):
    kw = config_kwargs("synthetic_implicit", rows=9_000, seed=0)
    store = build_implicit_store(tmp_path, progress=False, **kw)
    again = build_implicit_store(tmp_path, progress=False, **kw)
    assert again.path == store.path and store.rows("train") == 6_300
    ids = np.asarray(store.ids("train"))
    assert (ids >= 1).all() and (ids < np.asarray(store.cardinalities)).all()
    sides = [f["side"] for f in store.meta["schema"]["fields"]]
    assert sides[:3] == ["user", "item", "context"]
    assert store.oracle("test") is not None and (store.path / "preprocessor.json").is_file()


def test_bad_field_names_the_field():
    kw = config_kwargs("synthetic_implicit")
    fields = kw.pop("fields")
    fields[3] = {"name": "weekday", "cardinality": 7, "role": "habbit"}
    with pytest.raises(ValueError, match="weekday: role 'habbit'"):
        _as_spec(fields, kw)
    fields[3] = {"name": "weekday", "cardinality": 7, "role": "derived", "parent": "item"}
    with pytest.raises(ValueError, match="weekday: parent 'item' is not a user or habit field"):
        _as_spec(fields, kw)
