"""Synthetic Criteo-shape data drawn from a known ground-truth model.

Why this generator looks the way it does: in real ad logs a value's frequency and the size of its
effect are linked. A handful of frequent publishers, advertisers and devices carry most of the
signal; a long tail of rare values each carries little, and a model can only learn what it sees
often. So by default every value's effect scale shrinks with its frequency rank
(`effect_decay=1.0`: scale ∝ rank^-1). `effect_decay=0.0` gives every one of the ~800k values an
independent effect of the same size: a harder, mostly unlearnable setting kept as an option.

Interactions in real logs are partly shared across contexts (a user who likes sports ads likes
them on every site) and partly specific to the other field. So the ground-truth FFM vector of a
value for field j is a shared latent vector plus a field-specific deviation
(`field_aware_share=0.5` of the variance): a plain FM can learn the shared part, only FFM the
rest, and LR neither, which is what orders LR < FM < FFM on these data.

Values follow a Zipf law per field; ids are frequency ranks 1..n (0 is the OOV bucket). Because
the true probabilities are kept, the oracle AUC/logloss of each split is known exactly.

The generator is deterministic in `seed`: the ground-truth model comes from one random stream and
each split/chunk of rows from its own, so val/test rows do not change when train rows grow.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cvr.data.preprocess import FieldEncoder, PreprocessConfig, Preprocessor
from cvr.data.schema import FieldSpec, Schema
from cvr.data.store import EncodedStore, StoreMeta, StoreWriter, open_cached, store_dir
from cvr.ops.manifest import fingerprint, sha256_file

log = logging.getLogger(__name__)

# 2: stores carry preprocessor.json (raw rank -> store id), so a predictor can serve them.
GENERATOR_VERSION = 3
_CHUNK_ROWS = 8192
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3}


def criteo_cardinalities(num_fields: int = 39, total: int = 800_000, seed: int = 0) -> list[int]:
    """Cardinalities from tens to ~200k, log-spread, summing to about `total`."""
    rng = np.random.default_rng([seed, 99])
    logs = np.sort(rng.uniform(np.log(10), np.log(200_000), size=num_fields))
    cards = np.exp(logs)
    # Scale the upper part so the total lands near `total` while the smallest stay in the tens.
    big = cards > 1000
    cards[big] *= (total - cards[~big].sum()) / cards[big].sum()
    cards = np.clip(np.round(cards), 2, 200_000).astype(np.int64)
    return [int(c) for c in rng.permutation(cards)]


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every field here enters the store fingerprint."""

    rows_train: int = 200_000
    rows_val: int = 50_000
    rows_test: int = 50_000
    num_fields: int = 39
    total_values: int = 800_000
    user_fields: int = 10
    item_fields: int = 3
    zipf_exponent: float = 1.1
    generator: str = "ffm"  # ground truth: lr | fm | ffm
    k: int = 4
    effect_decay: float = 1.0
    field_aware_share: float = 0.5
    linear_scale: float = 0.5
    interaction_scale: float = 2.0
    positive_rate: float = 0.2
    funnel: bool = False
    conversion_rate: float = 0.1  # P(conversion | click) on average, when funnel
    # Selection-bias knob (funnel only): None keeps the conversion truth independent of the click
    # truth and calibrated over all impressions (stores made before the knob). A number rho in
    # [-1, 1]: conversion logit = rho * click score + sqrt(1 - rho^2) * its own score (the two
    # latent scores correlate by rho), calibrated so P(conversion | click) = conversion_rate
    # over clicked impressions; rho > 0 makes clicked impressions convert more than the rest.
    funnel_correlation: float | None = None
    min_count: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.generator not in ("lr", "fm", "ffm"):
            raise ValueError(
                f"data.generator: expected one of ['lr', 'fm', 'ffm'], got {self.generator!r}"
            )
        if not 0 <= self.field_aware_share <= 1:
            raise ValueError(
                f"data.field_aware_share must be in [0, 1], got {self.field_aware_share}"
            )
        if not 0 < self.positive_rate < 1:
            raise ValueError(f"data.positive_rate must be in (0, 1), got {self.positive_rate}")
        if self.funnel_correlation is not None and not -1 <= self.funnel_correlation <= 1:
            raise ValueError(
                f"data.funnel_correlation must be null or in [-1, 1], got {self.funnel_correlation}"
            )
        if self.user_fields + self.item_fields > self.num_fields:
            raise ValueError("data.user_fields + data.item_fields must not exceed num_fields")
        for key in ("rows_train", "rows_val", "rows_test"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")

    @property
    def labels(self) -> list[str]:
        return ["click", "conversion"] if self.funnel else ["click"]

    def field_names(self) -> list[str]:
        return [f"F{i:02d}" for i in range(self.num_fields)]

    def field_sides(self) -> list[str]:
        sides = ["context"] * self.num_fields
        sides[: self.user_fields] = ["user"] * self.user_fields
        sides[self.num_fields - self.item_fields :] = ["item"] * self.item_fields
        return sides


class GroundTruth:
    """A random LR / FM / FFM over frequency-ranked values, with effects shrinking by rank."""

    def __init__(self, spec: SyntheticSpec, cardinalities: list[int], stream: int) -> None:
        rng = np.random.default_rng([spec.seed, 7, stream])
        self.spec = spec
        self.cardinalities = cardinalities
        self.offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]]).astype(np.int64)
        total = int(sum(cardinalities))
        ranks = np.concatenate([np.arange(1, c + 1) for c in cardinalities]).astype(np.float64)
        scale = ranks ** (-spec.effect_decay)
        f = spec.num_fields
        self.w = (rng.standard_normal(total) * scale * spec.linear_scale).astype(np.float32)
        # Interaction scale normalised by the number of pairs so the logit spread stays O(1).
        pair_scale = spec.interaction_scale / np.sqrt(f * (f - 1) / 2) ** 0.5 / np.sqrt(spec.k)
        v_scale = (scale * pair_scale).astype(np.float32)
        if spec.generator == "ffm":
            # v[x, field j] = a shared latent vector of x plus a field-specific deviation; the
            # share of variance in the deviation is what only a field-aware model can learn.
            share = np.float32(spec.field_aware_share)
            self.v = rng.standard_normal((total, f, spec.k), dtype=np.float32)
            self.v *= np.sqrt(share)
            self.v += np.sqrt(1 - share) * rng.standard_normal((total, 1, spec.k), dtype=np.float32)
            self.v *= v_scale[:, None, None]
        elif spec.generator == "fm":
            self.v = rng.standard_normal((total, spec.k), dtype=np.float32)
            self.v *= v_scale[:, None] * np.sqrt(f / 2)
        else:
            self.v = None
        self.bias = 0.0

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """ids int (n, F) ranks 1..n_f -> float64 (n,) true logits."""
        rows = ids.astype(np.int64) - 1 + self.offsets
        z = self.bias + self.w[rows].sum(axis=1, dtype=np.float64)
        if self.spec.generator == "ffm":
            emb = self.v[rows]  # (n, F, F, k): [b, i, j] = v[x_i, field j]
            dots = np.einsum("bijk,bjik->bij", emb, emb)
            z += 0.5 * (dots.sum(axis=(1, 2)) - np.einsum("bii->b", dots))
        elif self.spec.generator == "fm":
            emb = self.v[rows]  # (n, F, k)
            z += 0.5 * ((emb.sum(1) ** 2).sum(1) - (emb**2).sum((1, 2)))
        return z

    def calibrate(
        self, sample_ids: np.ndarray, rate: float, weights: np.ndarray | None = None
    ) -> None:
        """Set the bias so the mean (`weights`-weighted) true probability on a sample is `rate`."""
        z = self.logits(sample_ids) - self.bias
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.average(_sigmoid(z + mid), weights=weights) > rate:
                hi = mid
            else:
                lo = mid
        self.bias = (lo + hi) / 2


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class CorrelatedTruth:
    """Conversion truth sharing latent factors with the click truth (`funnel_correlation`):
    logit = bias + rho * (click logit - click bias) + sqrt(1 - rho^2) * (own logit - own bias)."""

    def __init__(self, click: GroundTruth, own: GroundTruth, correlation: float) -> None:
        self.click, self.own, self.rho = click, own, float(correlation)
        self.bias = 0.0

    def logits(self, ids: np.ndarray) -> np.ndarray:
        shared = self.click.logits(ids) - self.click.bias
        own = self.own.logits(ids) - self.own.bias
        return self.bias + self.rho * shared + np.sqrt(1.0 - self.rho**2) * own

    calibrate = GroundTruth.calibrate


class SyntheticGenerator:
    """Draws rows chunk by chunk: ids, labels and true probabilities."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self.cardinalities = criteo_cardinalities(spec.num_fields, spec.total_values, spec.seed)
        self._cdfs = [self._zipf_cdf(n) for n in self.cardinalities]
        self.click_model = GroundTruth(spec, self.cardinalities, stream=1)
        calib = self.sample_ids(np.random.default_rng([spec.seed, 5]), 20_000)
        self.click_model.calibrate(calib, spec.positive_rate)
        self.conversion_model = None
        if spec.funnel and spec.funnel_correlation is None:
            self.conversion_model = GroundTruth(spec, self.cardinalities, stream=2)
            self.conversion_model.calibrate(calib, spec.conversion_rate)
        elif spec.funnel:
            own = GroundTruth(spec, self.cardinalities, stream=2)
            self.conversion_model = CorrelatedTruth(self.click_model, own, spec.funnel_correlation)
            # P(conversion | click) over clicks: the mean pCVR weighted by pCTR.
            p_click = _sigmoid(self.click_model.logits(calib))
            self.conversion_model.calibrate(calib, spec.conversion_rate, weights=p_click)

    def _zipf_cdf(self, n: int) -> np.ndarray:
        p = np.arange(1, n + 1, dtype=np.float64) ** (-self.spec.zipf_exponent)
        cdf = np.cumsum(p)
        return cdf / cdf[-1]

    def sample_ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """int32 (n, F) frequency ranks 1..n_f."""
        u = rng.random((self.spec.num_fields, n))
        cols = [np.searchsorted(cdf, u[f], side="right") + 1 for f, cdf in enumerate(self._cdfs)]
        ids = np.stack(cols, axis=1)
        return np.minimum(ids, np.asarray(self.cardinalities)).astype(np.int32)

    def chunks(self, split: str, with_labels: bool = True):
        """Yield (ids, labels (n, L), true probabilities (n, L)) for one split, in order."""
        total = getattr(self.spec, f"rows_{split}")
        for index, start in enumerate(range(0, total, _CHUNK_ROWS)):
            n = min(_CHUNK_ROWS, total - start)
            rng = np.random.default_rng([self.spec.seed, _SPLIT_STREAM[split], index])
            ids = self.sample_ids(rng, n)
            if not with_labels:
                yield ids, None, None
                continue
            p_click = _sigmoid(self.click_model.logits(ids))
            click = rng.random(n) < p_click
            probs, labels = [p_click], [click]
            if self.conversion_model is not None:
                p_conv_given_click = _sigmoid(self.conversion_model.logits(ids))
                conversion = click & (rng.random(n) < p_conv_given_click)
                probs.append(p_click * p_conv_given_click)
                labels.append(conversion)
            yield (
                ids,
                np.stack(labels, axis=1).astype(np.float32),
                np.stack(probs, axis=1).astype(np.float32),
            )


def _vocabulary_maps(gen: SyntheticGenerator, min_count: int) -> list[np.ndarray]:
    """Per field, a map rank -> field-local id: values seen < min_count times in train -> 0."""
    counts = [np.zeros(c + 1, dtype=np.int64) for c in gen.cardinalities]
    for ids, _, _ in gen.chunks("train", with_labels=False):
        for f in range(ids.shape[1]):
            counts[f] += np.bincount(ids[:, f], minlength=len(counts[f]))
    return [rank_map(c, min_count) for c in counts]


def rank_map(counts: np.ndarray, min_count: int) -> np.ndarray:
    """int32 map rank -> field-local id from a field's train counts per rank (index 0 unused):
    ranks seen >= min_count times get ids 1.. in rank order, the rest 0 (OOV)."""
    keep = counts >= max(min_count, 1)
    keep[0] = False
    m = np.zeros(len(counts), dtype=np.int32)
    m[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)  # ranks stay in frequency order
    return m


def synthetic_schema(spec: SyntheticSpec) -> Schema:
    """Every field categorical (values are frequency ranks), sides as the spec says."""
    names, sides = spec.field_names(), spec.field_sides()
    return Schema(
        fields=tuple(FieldSpec(n, "categorical", s) for n, s in zip(names, sides, strict=True)),
        labels=tuple(spec.labels),
        label=spec.labels[0],
    )


def synthetic_preprocessor(spec: SyntheticSpec, maps: list[np.ndarray]) -> Preprocessor:
    """The fitted Preprocessor of a synthetic store: raw values are frequency ranks (as ints or
    strings) and each field's vocabulary is its kept ranks in rank order, so it maps a rank to
    the same field-local id as `maps` (unkept or unseen ranks -> 0)."""
    return rank_preprocessor(synthetic_schema(spec), maps, spec.min_count)


def rank_preprocessor(schema: Schema, maps: list[np.ndarray], min_count: int) -> Preprocessor:
    """A fitted Preprocessor whose raw values are ranks: field f's vocabulary is the ranks
    `maps[f]` keeps, in rank order (see `rank_map`)."""
    min_count = max(min_count, 1)
    encoders = [
        FieldEncoder(
            name=name,
            source=name,
            kind="categorical",
            rule="vocab",
            min_count=min_count,
            vocab=[str(rank) for rank in np.flatnonzero(m).tolist()],
        )
        for name, m in zip(schema.field_names, maps, strict=True)
    ]
    return Preprocessor.from_encoders(schema, PreprocessConfig(min_count=min_count), encoders)


def build_synthetic_store(
    cache_root: str | Path, name: str = "synthetic", progress: bool = True, **spec_kwargs
) -> EncodedStore:
    """Generate (or reuse from the cache) a synthetic store; see `SyntheticSpec` for options."""
    spec = SyntheticSpec(**spec_kwargs)
    identity = asdict(spec)
    if identity["funnel_correlation"] is None:  # stores made before the knob keep their id
        del identity["funnel_correlation"]
    fp = fingerprint("synthetic", GENERATOR_VERSION, identity)
    path = store_dir(cache_root, name, fp)
    cached = open_cached(path, fp)
    if cached is not None:
        log.info("reusing cached synthetic store %s", path)
        return cached
    gen = SyntheticGenerator(spec)
    maps = _vocabulary_maps(gen, spec.min_count)
    cardinalities = [int(m.max()) + 1 for m in maps]
    writer = StoreWriter(path, spec.num_fields, len(spec.labels))
    try:
        total = spec.rows_train + spec.rows_val + spec.rows_test
        with tqdm(total=total, desc="generating synthetic rows", disable=not progress) as bar:
            for split in ("train", "val", "test"):
                for ids, labels, probs in gen.chunks(split):
                    local = np.stack([maps[f][ids[:, f]] for f in range(ids.shape[1])], axis=1)
                    writer.append(split, local, labels, oracle=probs)
                    bar.update(len(ids))
        pre_path = writer.tmp / "preprocessor.json"
        pre = synthetic_preprocessor(spec, maps)
        pre.save(pre_path)
        meta = StoreMeta(
            name=name,
            fingerprint=fp,
            schema=pre.schema.to_dict(),
            cardinalities=cardinalities,
            labels=list(spec.labels),
            label=spec.labels[0],
            preprocess=pre.config.to_dict(),
            synthetic={**asdict(spec), "generator_version": GENERATOR_VERSION},
        )
        store = writer.finish(meta, files={"preprocessor.json": sha256_file(pre_path)})
    except BaseException:
        writer.abort()
        raise
    log.info("wrote synthetic store %s (%d rows)", path, total)
    return store
