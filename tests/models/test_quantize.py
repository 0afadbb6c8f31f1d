"""Post-training quantization: bounded logit error, exact storage formulas, models left intact."""

import numpy as np
import pytest
import torch
from torch import nn

from cvr.models.ctr import FFM, FM, FwFM
from cvr.models.embeddings import FullEmbedding, HashedEmbedding, MixedDimEmbedding, QREmbedding
from cvr.models.interactions import field_pairs
from cvr.models.quantize import (
    QuantizedEmbedding,
    compare_quantized,
    int8_quantize,
    quantize_model,
)
from tests.models.test_embeddings import CARDS, random_ids
from tests.models.test_models import randomize

MODELS = {"fm": FM, "ffm": FFM, "fwfm": FwFM}
# Half an ulp, relative, for normal numbers (10 and 7 mantissa bits), and fp16's absolute
# half-step among subnormals (|w| < 2^-14, spacing 2^-24).
ROUNDING = {"fp16": (2.0**-11, 2.0**-25), "bf16": (2.0**-8, 0.0)}


def element_error_bound(table: FullEmbedding, quantized: QuantizedEmbedding, ids):
    """Largest possible |w - dequantized(w)| of each looked-up element, (B, F, D)."""
    weight = table(ids).detach()
    if quantized.precision == "int8":
        rows = quantized.global_ids(ids)
        scale = quantized.scale[rows] if quantized.scale.shape[0] > 1 else quantized.scale[0]
        return (scale / 2).expand_as(weight)
    relative, absolute = ROUNDING[quantized.precision]
    return weight.abs() * relative + absolute


def pair_bound(a, b, ha, hb):
    """Bound on |<a', b'> - <a, b>| over the last axis given |a' - a| <= ha, |b' - b| <= hb."""
    return (a.abs() * hb + ha * b.abs() + ha * hb).sum(dim=-1)


def logit_error_bound(model, quantized, ids):
    """Per-sample bound on |logit(quantized) - logit(model)|, from the per-element bounds."""
    bound = element_error_bound(model.linear, quantized.linear, ids).sum(dim=(1, 2))
    emb = model.embedding(ids).detach()
    h = element_error_bound(model.embedding, quantized.embedding, ids)
    pair_i, pair_j = field_pairs(len(CARDS))
    if isinstance(model, FFM):
        shape = (len(ids), len(CARDS), len(CARDS), model.dim)
        emb, h = emb.view(shape), h.reshape(shape)
        terms = pair_bound(
            emb[:, pair_i, pair_j],
            emb[:, pair_j, pair_i],
            h[:, pair_i, pair_j],
            h[:, pair_j, pair_i],
        )
    else:
        terms = pair_bound(emb[:, pair_i], emb[:, pair_j], h[:, pair_i], h[:, pair_j])
        if isinstance(model, FwFM):
            terms = terms * model.pair_weight.detach().abs()
    return bound + terms.sum(dim=1)


@pytest.mark.parametrize("model_name", MODELS)
def test_quantized_logits_stay_within_the_derived_bound(model_name):
    model = randomize(MODELS[model_name](CARDS, dim=4))
    ids = random_ids(CARDS, 256, seed=1)
    reference = model(ids).detach()
    worst = {}
    for precision in ("int8", "fp16", "bf16"):
        quantized = quantize_model(model, precision)
        diff = (quantized(ids) - reference).abs()
        bound = logit_error_bound(model, quantized, ids)
        # 1e-4: float32 rounding of logits of size ~10, summed in a different order.
        assert torch.all(diff <= bound + 1e-4), (precision, (diff - bound).max())
        assert diff.max() > 0
        worst[precision] = (diff.max().item(), bound.max().item())
    assert worst["fp16"][0] < worst["int8"][0] and worst["fp16"][1] < worst["int8"][1]
    assert worst["fp16"][0] < worst["bf16"][0]


def test_int8_error_per_element_is_at_most_half_a_step():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 7, generator=g) * torch.rand(50, 1, generator=g) * 3
    weight[3] = 0.25  # a constant row: scale 0, restored exactly
    codes, scale, minimum = int8_quantize(weight)
    assert codes.dtype == torch.uint8 and scale.shape == (50, 1) and minimum.shape == (50, 1)
    restored = minimum + scale * codes.float()
    assert torch.all((restored - weight).abs() <= scale / 2 + 1e-6)
    assert torch.equal(restored[3], weight[3])
    # Each row spans its own [min, max]: codes reach both ends.
    assert torch.all(codes.max(dim=1).values[scale[:, 0] > 0] == 255)
    assert torch.all(codes.min(dim=1).values == 0)


def test_int8_bytes_formula_for_ffm():
    model = FFM(CARDS, dim=4)
    rows, width = sum(CARDS), len(CARDS) * 4
    quantized = quantize_model(model, "int8")
    # Wide rows: 1 byte per element plus float32 scale and minimum per row.
    assert quantized.embedding.storage_bytes() == rows * width + 8 * rows
    assert model.embedding.storage_bytes() == rows * width * 4
    ratio = quantized.embedding.storage_bytes() / model.embedding.storage_bytes()
    assert ratio == pytest.approx(0.25 + 2 / width)
    # The 1-wide linear table: table-wise scale and minimum (8 bytes for the whole table).
    assert quantized.linear.storage_bytes() == rows + 8
    half = quantize_model(model, "fp16")
    assert half.embedding.storage_bytes() == rows * width * 2
    assert half.linear.storage_bytes() == rows * 2


def test_quantize_model_leaves_the_float_model_alone():
    model = randomize(FFM(CARDS, dim=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize_model(model, "int8")
    assert isinstance(model.embedding, FullEmbedding) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(quantized.embedding, QuantizedEmbedding) and not quantized.training
    assert not any(p.requires_grad for p in quantized.parameters())


def test_quantized_state_dict_round_trips():
    source = quantize_model(randomize(FM(CARDS, dim=3), seed=1), "int8")
    target = quantize_model(randomize(FM(CARDS, dim=3), seed=2), "int8")
    target.load_state_dict(source.state_dict())
    ids = random_ids(CARDS, 40)
    assert torch.equal(source(ids), target(ids))


@pytest.mark.parametrize(
    "table",
    [
        lambda **kw: HashedEmbedding(**kw, buckets=64),
        lambda **kw: QREmbedding(**kw, threshold=50, collisions=8),
        lambda **kw: MixedDimEmbedding(**kw, alpha=0.5),
    ],
    ids=["hashed", "qr", "mixed_dim"],
)
def test_variants_are_quantized_through_their_row_blocks(table):
    model = randomize(FFM(CARDS, dim=2, embedding=table))
    quantized = quantize_model(model, "fp16")
    assert not any(isinstance(m, FullEmbedding) for m in quantized.modules())
    assert quantized.embedding.storage_bytes() < model.embedding.storage_bytes()
    ids = random_ids(CARDS, 64)
    torch.testing.assert_close(quantized(ids), model(ids).detach(), atol=0.05, rtol=0.01)


class OwnRows(nn.Module):
    """A table that keeps its rows in its own parameter, out of quantize_model's reach."""

    def __init__(self, cardinalities, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(sum(cardinalities), dim))

    def storage_bytes(self):
        return self.weight.numel() * 4


def test_tables_outside_full_embedding_blocks_are_refused():
    model = FM(CARDS, dim=2, embedding=OwnRows)
    with pytest.raises(NotImplementedError, match="OwnRows at 'embedding'"):
        quantize_model(model, "int8")
    with pytest.raises(ValueError, match="precision"):
        quantize_model(model, "int4")


def test_compare_quantized_reports_every_precision():
    model = randomize(FwFM(CARDS, dim=2))
    ids = random_ids(CARDS, 500, seed=4).numpy()
    labels = (np.random.default_rng(0).random(500) < 0.3).astype(np.float32)
    report = compare_quantized(model, ids, labels)
    for prefix in ("float", "fp16", "bf16", "int8"):
        assert 0 <= report[f"{prefix}/auc"] <= 1 and report[f"{prefix}/logloss"] > 0
    assert report["fp16/max_abs_logit_diff"] < report["int8/max_abs_logit_diff"]
    # dim 2: row-wise int8 costs 2 + 8 bytes a row against fp16's 4 (narrow rows do not pay).
    rows = sum(CARDS)
    assert report["int8/embedding_bytes"] == rows * (2 + 8) + (rows + 8)
    assert report["fp16/embedding_bytes"] == rows * 2 * 2 + rows * 2
    assert abs(report["int8/auc"] - report["float/auc"]) < 0.05
