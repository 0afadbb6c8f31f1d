"""Synthetic implicit feedback with sampled negatives: the Frappe / MovieLens-tag family.

Public CTR sets such as Frappe (app-usage logs: user, item and eight context fields) and
MovieLens-tag (user, movie, tag) hold positives only; their negatives are sampled: for each
logged row, two rows that keep everything but one field (the item in Frappe, the tag in
MovieLens-tag), which is drawn uniformly at random. Positives follow people's tastes and are
popularity-skewed; negatives do not. So a model separates them well (FM/FFM test AUC 0.93-0.98
in the papers) and learns it slowly, over many epochs: a regime the Criteo-shape generator
(`cvr.data.synthetic`, AUC 0.65-0.80) is not in.

How a positive is drawn (every step vectorized, one random stream per chunk):

- a user by activity (Zipf over users);
- `habit` context fields from that user's own habits (a Dirichlet draw per user around a Zipf base,
  `concentration` small = a user keeps to a few values: a home city) and `derived` fields as a
  fixed function of another field (country of the city, weekend of the weekday);
- a latent topic from the user's topic mixture, shifted by each habit value (daytime, weather...
  move what people use): the user-context structure;
- `topic` fields (the movie a tag is given to) and the `target` field (the item, or the tag) from
  that topic's distribution: Zipf popularity times a topic-specific affinity.

Each positive gets `negatives` rows (default 2) equal to it but for the target, drawn uniformly;
all rows are shuffled and split at random (`val_fraction`, `test_fraction`: Frappe's 7:2:1). The
true P(positive | row) is known in closed form (a sum over topics), so the oracle AUC is too.

Cardinalities are a full dataset's at `reference_rows`; other row counts scale them linearly,
keeping the rows per value (so 50k MovieLens-tag rows are as dense as its 2M).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cvr.data.schema import FieldSpec, Schema
from cvr.data.store import EncodedStore, StoreMeta, StoreWriter, open_cached, store_dir
from cvr.data.synthetic import rank_map, rank_preprocessor
from cvr.ops.manifest import fingerprint, sha256_file

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
ROLES = ("user", "target", "topic", "habit", "derived")
_SIDES = {
    "user": "user",
    "target": "item",
    "topic": "item",
    "habit": "context",
    "derived": "context",
}
_CHUNK_POSITIVES = 1 << 15


@dataclass(frozen=True)
class ImplicitField:
    """One field: its cardinality at `reference_rows`, its role, and for `habit` how tightly a
    user keeps to few values (`concentration`), for `derived` the field it is a function of."""

    name: str
    cardinality: int
    role: str
    concentration: float = 1.0
    parent: str | None = None


@dataclass(frozen=True)
class ImplicitSpec:
    """What to generate; every value here enters the store fingerprint."""

    fields: tuple[ImplicitField, ...]
    rows: int = 288_609
    reference_rows: int = 288_609
    negatives: int = 2
    val_fraction: float = 0.2
    test_fraction: float = 0.1
    topics: int = 16
    topic_concentration: float = 0.3  # Dirichlet of a user's topic mixture (small: few topics)
    user_activity_exponent: float = 1.0  # Zipf exponent of how many rows each user has
    popularity_exponent: float = 1.0  # Zipf exponent of target / topic field popularity
    habit_exponent: float = 1.0  # Zipf exponent of a habit field's base distribution
    affinity_scale: float = 1.5  # std of a value's log-affinity to a topic
    context_scale: float = 1.0  # std of a habit value's log-shift of the topic mixture
    min_count: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        roles = [f.role for f in self.fields]
        for f in self.fields:
            if f.role not in ROLES:
                raise ValueError(f"data.fields: {f.name}: role {f.role!r} not one of {ROLES}")
            if f.cardinality < 2:
                raise ValueError(f"data.fields: {f.name}: cardinality must be >= 2")
            # a derived field is drawn after the user and habit fields, from one of them
            parents = [g.name for g in self.fields if g.role in ("user", "habit")]
            if f.role == "derived" and f.parent not in parents:
                raise ValueError(
                    f"data.fields: {f.name}: parent {f.parent!r} is not a user or habit field "
                    f"(one of {parents})"
                )
            if f.role == "habit" and f.concentration <= 0:
                raise ValueError(f"data.fields: {f.name}: concentration must be > 0")
        if roles.count("user") != 1 or roles.count("target") != 1:
            raise ValueError(
                f"data.fields: need exactly one user and one target field, got {roles}"
            )
        if self.rows < 3 * (self.negatives + 1):
            raise ValueError(f"data.rows must be >= {3 * (self.negatives + 1)}, got {self.rows}")
        if self.negatives < 1:
            raise ValueError(f"data.negatives must be >= 1, got {self.negatives}")
        if not (0 < self.val_fraction and 0 < self.test_fraction and
                self.val_fraction + self.test_fraction < 1):  # fmt: skip
            raise ValueError("data.val_fraction and data.test_fraction must be > 0, sum < 1")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def cardinalities(self) -> list[int]:
        """Each field's cardinality at `rows` (linear in rows from `reference_rows`)."""
        scale = self.rows / self.reference_rows
        return [max(2, round(f.cardinality * scale)) for f in self.fields]

    def positives(self) -> int:
        return self.rows // (self.negatives + 1)


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = np.arange(1, n + 1, dtype=np.float64) ** (-exponent)
    return p / p.sum()


def _sample_rows(cdfs: np.ndarray, which: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draw one value per row from row `which[r]` of a table of CDFs (T, n): 1-based ranks."""
    flat = (cdfs + np.arange(len(cdfs))[:, None]).ravel()
    pos = np.searchsorted(flat, which + u, side="right") - which * cdfs.shape[1]
    return np.minimum(pos, cdfs.shape[1] - 1) + 1


def _cdf(p: np.ndarray) -> np.ndarray:
    c = np.cumsum(p, axis=-1)
    return c / c[..., -1:]


class ImplicitGenerator:
    """The latent preference model of a spec and its positives/negatives, chunk by chunk."""

    def __init__(self, spec: ImplicitSpec) -> None:
        self.spec = spec
        self.cardinalities = spec.cardinalities()
        rng = np.random.default_rng([spec.seed, 21])
        k = spec.topics
        index = {f.name: i for i, f in enumerate(spec.fields)}
        self.user = next(i for i, f in enumerate(spec.fields) if f.role == "user")
        self.target = next(i for i, f in enumerate(spec.fields) if f.role == "target")
        n_users = self.cardinalities[self.user]
        self.user_cdf = _cdf(_zipf(n_users, spec.user_activity_exponent))
        self.user_topics = np.log(
            rng.dirichlet(np.full(k, spec.topic_concentration), n_users) + 1e-12
        )
        self.habits: list[tuple[int, np.ndarray, np.ndarray]] = []  # (field, user cdfs, shifts)
        self.derived: list[tuple[int, int, np.ndarray]] = []  # (field, parent, parent -> value)
        self.topical: list[tuple[int, np.ndarray]] = []  # (field, P(value | topic) (k, n))
        for i, f in enumerate(spec.fields):
            n = self.cardinalities[i]
            if f.role == "habit":
                base = _zipf(n, spec.habit_exponent) * f.concentration
                per_user = rng.gamma(np.broadcast_to(base, (n_users, n)))  # Dirichlet rows
                shifts = rng.standard_normal((n, k)) * spec.context_scale
                self.habits.append((i, _cdf(per_user + 1e-300), shifts))
            elif f.role == "derived":
                parent = index[f.parent]
                n_parent = self.cardinalities[parent]
                # every value is hit when it can be: a shuffled round-robin over the parent's values
                mapping = rng.permutation(np.arange(n_parent) % n) + 1
                self.derived.append((i, parent, mapping))
            elif f.role in ("topic", "target"):
                log_p = np.log(_zipf(n, spec.popularity_exponent))[None, :]
                log_p = log_p + rng.standard_normal((k, n)) * spec.affinity_scale
                p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
                self.topical.append((i, p / p.sum(axis=1, keepdims=True)))

    def _topic_weights(self, ids: np.ndarray) -> np.ndarray:
        """float64 (n, k) P(topic | user, habit values) of rows (1-based ranks)."""
        z = self.user_topics[ids[:, self.user] - 1].copy()
        for i, _, shifts in self.habits:
            z += shifts[ids[:, i] - 1]
        z -= z.max(axis=1, keepdims=True)
        w = np.exp(z)
        return w / w.sum(axis=1, keepdims=True)

    def positives(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """int32 (n, F) 1-based ranks of n positives."""
        ids = np.zeros((n, len(self.cardinalities)), dtype=np.int64)
        ids[:, self.user] = _sample_rows(
            self.user_cdf[None, :], np.zeros(n, np.int64), rng.random(n)
        )
        users = ids[:, self.user] - 1
        for i, cdfs, _ in self.habits:
            ids[:, i] = _sample_rows(cdfs, users, rng.random(n))
        for i, parent, mapping in self.derived:
            ids[:, i] = mapping[ids[:, parent] - 1]
        w = self._topic_weights(ids)
        topic = (np.cumsum(w, axis=1) < rng.random(n)[:, None]).sum(axis=1)
        topic = np.minimum(topic, self.spec.topics - 1)
        for i, p in self.topical:
            ids[:, i] = _sample_rows(_cdf(p), topic, rng.random(n))
        return ids.astype(np.int32)

    def chunk(self, index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n * (1 + negatives), F), labels) of chunk `index`: each positive, then its
        negatives (the same row with a uniform target)."""
        rng = np.random.default_rng([self.spec.seed, 22, index])
        pos = self.positives(rng, n)
        reps = self.spec.negatives
        neg = np.repeat(pos, reps, axis=0)
        neg[:, self.target] = rng.integers(1, self.cardinalities[self.target] + 1, len(neg))
        labels = np.concatenate([np.ones(n, np.float32), np.zeros(n * reps, np.float32)])
        return np.concatenate([pos, neg]), labels

    def true_probability(self, ids: np.ndarray) -> np.ndarray:
        """float64 (n,) P(positive | row): A / (A + negatives * B / n_target), with
        A = sum_t P(t | user, habits) prod_topic-fields P(value | t) P(target | t) and B the same
        without the target (a negative's target is uniform, its other fields are the positive's)."""
        w = self._topic_weights(ids)
        for i, p in self.topical:
            if i != self.target:
                w = w * p[:, ids[:, i] - 1].T
        p_target = next(p for i, p in self.topical if i == self.target)
        a = (w * p_target[:, ids[:, self.target] - 1].T).sum(axis=1)
        b = w.sum(axis=1) * self.spec.negatives / self.cardinalities[self.target]
        return a / (a + b)


def implicit_schema(spec: ImplicitSpec) -> Schema:
    """Every field categorical; user -> user side, target and topic fields -> item, the rest
    context."""
    return Schema(
        fields=tuple(FieldSpec(f.name, "categorical", _SIDES[f.role]) for f in spec.fields),
        labels=("click",),
        label="click",
    )


def _as_spec(fields: Any, spec_kwargs: dict[str, Any]) -> ImplicitSpec:
    parsed = tuple(f if isinstance(f, ImplicitField) else ImplicitField(**dict(f)) for f in fields)
    return ImplicitSpec(fields=parsed, **spec_kwargs)


def generate(spec: ImplicitSpec, progress: bool = False) -> dict[str, tuple[np.ndarray, ...]]:
    """{split: (ids int32 (n, F) 1-based ranks, labels float32 (n,), true P float32 (n,))}."""
    gen = ImplicitGenerator(spec)
    total = spec.positives()
    parts = []
    starts = range(0, total, _CHUNK_POSITIVES)
    for index, start in enumerate(
        tqdm(starts, desc="generating implicit rows", disable=not progress)
    ):
        parts.append(gen.chunk(index, min(_CHUNK_POSITIVES, total - start)))
    ids = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    order = np.random.default_rng([spec.seed, 23]).permutation(len(ids))
    ids, labels = ids[order], labels[order]
    probs = gen.true_probability(ids).astype(np.float32)
    n_val = round(len(ids) * spec.val_fraction)
    n_test = round(len(ids) * spec.test_fraction)
    n_train = len(ids) - n_val - n_test
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, len(ids))}  # fmt: skip
    return {s: (ids[a:b], labels[a:b], probs[a:b]) for s, (a, b) in bounds.items()}


def build_implicit_store(
    cache_root: str | Path,
    fields: Any,
    name: str = "synthetic_implicit",
    progress: bool = True,
    **spec_kwargs: Any,
) -> EncodedStore:
    """Generate (or reuse from the cache) an implicit-feedback store; see `ImplicitSpec`."""
    spec = _as_spec(fields, spec_kwargs)
    identity = asdict(spec)
    fp = fingerprint("synthetic_implicit", GENERATOR_VERSION, identity)
    path = store_dir(cache_root, name, fp)
    cached = open_cached(path, fp)
    if cached is not None:
        log.info("reusing cached implicit store %s", path)
        return cached
    splits = generate(spec, progress)
    cards = spec.cardinalities()
    train_ids = splits["train"][0]
    maps = [
        rank_map(np.bincount(train_ids[:, f], minlength=c + 1), spec.min_count)
        for f, c in enumerate(cards)
    ]
    writer = StoreWriter(path, len(cards), 1)
    try:
        for split, (ids, labels, probs) in splits.items():
            local = np.stack([maps[f][ids[:, f]] for f in range(len(cards))], axis=1)
            writer.append(split, local, labels[:, None], oracle=probs[:, None])
        pre_path = writer.tmp / "preprocessor.json"
        pre = rank_preprocessor(implicit_schema(spec), maps, spec.min_count)
        pre.save(pre_path)
        meta = StoreMeta(
            name=name,
            fingerprint=fp,
            schema=pre.schema.to_dict(),
            cardinalities=[int(m.max()) + 1 for m in maps],
            labels=["click"],
            label="click",
            preprocess=pre.config.to_dict(),
            synthetic={**identity, "kind": "implicit", "generator_version": GENERATOR_VERSION},
        )
        store = writer.finish(meta, files={"preprocessor.json": sha256_file(pre_path)})
    except BaseException:
        writer.abort()
        raise
    log.info("wrote implicit store %s (%d rows)", path, spec.rows)
    return store
