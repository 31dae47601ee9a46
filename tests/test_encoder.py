"""MLX BERT sentence encoder: parity with the PyTorch reference, batching, loading errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import ospo_mlx  # noqa: F401  (BLAS before mlx)
from ospo_mlx.errors import OspoError

FIXTURE = Path(__file__).parent / "fixtures" / "encoder_reference.json"


@pytest.fixture(scope="module")
def encoder():
    from ospo_mlx.reward.encoder import load_encoder

    return load_encoder()


def test_parity_with_pytorch_reference(encoder):
    ref = json.loads(FIXTURE.read_text())
    vectors = encoder.encode(ref["sentences"])
    expected = np.array(ref["vectors"])
    cos = (vectors * expected).sum(1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batching_invariance(encoder):
    texts = [
        "short",
        "a somewhat longer product description with many words in it",
        "mid length text here",
    ]
    batch = encoder.encode(texts)
    for i, text in enumerate(texts):
        alone = encoder.encode([text])[0]
        np.testing.assert_allclose(batch[i], alone, atol=2e-6)
    # Small token budgets force several length-sorted batches; order must be preserved.
    old = encoder.batch_tokens
    try:
        encoder.batch_tokens = 16
        np.testing.assert_allclose(encoder.encode(texts), batch, atol=2e-6)
    finally:
        encoder.batch_tokens = old


def test_counts_and_empty_input(encoder):
    before = encoder.texts_encoded
    assert encoder.encode([]).shape == (0, encoder.dim)
    encoder.encode(["x", "y"])
    assert encoder.texts_encoded == before + 2


def test_truncation_to_max_length(encoder):
    long = "word " * 1000
    ids = encoder.tokenize([long])[0][0]
    assert len(ids) == encoder.max_length == 256
    assert np.isfinite(encoder.encode([long])).all()


def test_gelu_is_the_erf_form():
    import mlx.core as mx
    import mlx.nn as nn

    from ospo_mlx.reward.bert import gelu_erf

    x = np.linspace(-12, 12, 4001, dtype=np.float32).reshape(-1, 1)
    got = np.array(gelu_erf(mx.array(x)))[:, 0]
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x[:, 0].astype(float)])
    np.testing.assert_allclose(got, exact, atol=2e-6)
    tanh_form = np.array(nn.gelu_approx(mx.array(x)))[:, 0]
    assert np.abs(tanh_form - exact).max() > 1e-4  # the test can tell the two forms apart


def test_cls_pooling_and_identity(tmp_path, encoder):
    from ospo_mlx.reward.encoder import SentenceEncoder

    src = encoder.directory
    dst = tmp_path / "cls-encoder"
    dst.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (dst / name).symlink_to(src / name)
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    cls_enc = SentenceEncoder(dst)
    assert cls_enc.pooling == "cls"
    assert cls_enc.identity["fingerprint"] != encoder.identity["fingerprint"]
    a, b = cls_enc.encode(["red shoes"]), encoder.encode(["red shoes"])
    assert not np.allclose(a, b, atol=1e-3)


def test_missing_files_are_one_line_errors(tmp_path, encoder):
    from ospo_mlx.reward.encoder import SentenceEncoder

    with pytest.raises(OspoError, match=r"missing config\.json"):
        SentenceEncoder(tmp_path)
    shutil.copy(encoder.directory / "config.json", tmp_path / "config.json")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(OspoError, match="not supported"):
        SentenceEncoder(tmp_path)


def test_packing_indices_round_trip():
    """Gather to per-group padded rows and unpad back recovers every packed token in order."""
    from ospo_mlx.reward.bert import Packing

    lengths = [2, 3, 3, 7, 9, 9, 17, 30]  # sorted, as encode() sends them: 4 attention groups
    p = Packing.build(lengths)
    assert [(n, length) for _, n, length, _ in p.groups] == [(4, 7), (2, 9), (1, 17), (1, 30)]
    total = sum(lengths)
    tokens = np.arange(total)
    padded = np.concatenate([tokens[np.array(g)] for g, *_ in p.groups])
    np.testing.assert_array_equal(padded[np.array(p.unpad)], tokens)
    np.testing.assert_array_equal(p.starts, np.cumsum([0, *lengths[:-1]]))
    np.testing.assert_array_equal(np.array(p.positions)[p.starts[3] : p.starts[4]], np.arange(7))
    # Masks hide exactly the padding keys of each row.
    first = np.array(p.groups[0][3])[:, 0, 0, :]
    np.testing.assert_array_equal(
        first < -1e8, np.arange(7)[None, :] >= np.array([[2], [3], [3], [7]])
    )
    assert p.groups[2][3] is None  # a lone row has no padding
    single = Packing.build([5])
    assert single.unpad is None and single.groups[0][0] is None  # no copies for one sequence


def test_packed_batch_matches_single_texts(encoder):
    """Many lengths in one packed batch (several attention groups) equal one-at-a-time encodes."""
    words = [
        "wireless",
        "noise",
        "cancelling",
        "over",
        "ear",
        "headphones",
        "with",
        "long",
        "battery",
        "life",
        "and",
        "case",
    ]
    texts = [" ".join(words[: 1 + (7 * i) % len(words)]) * (1 + i // 5) for i in range(12)]
    tok0 = encoder.tokens_encoded
    batch = encoder.encode(texts)
    assert encoder.tokens_encoded - tok0 == sum(len(ids) for ids, _ in encoder.tokenize(texts))
    assert len({len(ids) // 8 for ids, _ in encoder.tokenize(texts)}) >= 3
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batch, alone, atol=2e-6)


def test_pooled_states_are_sums_before_normalization(encoder):
    """`encode_pooled` * weight is the token sum (mean pooling) that the stand-in game adds up;
    normalized, it is exactly `encode`."""
    import mlx.core as mx

    from ospo_mlx.reward.bert import Packing

    texts = ["waterproof hiking boots", "a", "noise cancelling over ear headphones for travel"]
    pooled, weights = encoder.encode_pooled(texts)
    np.testing.assert_array_equal(
        pooled / np.linalg.norm(pooled, axis=1, keepdims=True), encoder.encode(texts)
    )
    for text, p, w in zip(texts, pooled, weights, strict=True):
        ids, types = encoder.tokenize([text])[0]
        assert w == len(ids)
        hidden = encoder.model(
            mx.array(np.array(ids, np.int32)), mx.array(np.array(types, np.int32)),
            Packing.build([len(ids)]),
        )  # fmt: skip
        np.testing.assert_allclose(p * w, np.array(hidden).sum(0), rtol=1e-4, atol=1e-4)
