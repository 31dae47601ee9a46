"""Group sampling on the tiny model: shapes, ordering, offsets, seeds, EOS, log-probs."""

from __future__ import annotations

from dataclasses import replace

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.models.load import load_model
from ospo_mlx.models.tiny import make_tiny_model
from ospo_mlx.train.rollout import SamplingConfig, decode_with_offsets, sample_groups

QUESTIONS = ["What is the capital of France?", "red running shoes", "Name three fruits, please."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0, eos_prob=0.08)
    return load_model(str(path))


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    return [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in QUESTIONS
    ]


def _check_offsets(text, spans):
    end = 0
    for start, stop in spans:
        assert start == end and stop >= start
        end = stop
    assert end == len(text)


def test_shapes_order_and_text(tiny, prompts):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=24)
    r = sample_groups(model, tok, prompts, cfg, num_generations=4, seed=1)
    assert len(r) == 12 and r.num_prompts == 3 and r.group_size == 4
    assert r.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert all(r.prompt_tokens[i] == prompts[i // 4] for i in range(12))
    assert list(r.group(1)) == [4, 5, 6, 7]
    for toks, text, spans, done in zip(
        r.completion_tokens, r.texts, r.token_offsets, r.finished, strict=True
    ):
        assert 1 <= len(toks) <= 24 and len(spans) == len(toks)
        assert done == (toks[-1] == 2) and 2 not in toks[:-1]
        assert done or len(toks) == 24
        assert text == tok._tokenizer.decode(toks[:-1] if done else toks)
        assert "<|im_end|>" not in text
        _check_offsets(text, spans)
    assert r.stats.generation_tokens == sum(r.completion_lengths())
    assert r.stats.tokens_per_s > 0
    assert 0 < sum(r.finished) < 12  # some stop on EOS, some hit the limit
    assert r.metrics()["completions/clipped_ratio"] == pytest.approx(1 - sum(r.finished) / 12)


def test_groups_belong_to_their_prompt(tiny, prompts):
    # Greedy: each group must equal what its prompt alone produces.
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0)
    together = sample_groups(model, tok, prompts, cfg, num_generations=2)
    for p, prompt in enumerate(prompts):
        alone = sample_groups(model, tok, [prompt], cfg, num_generations=2)
        for i in together.group(p):
            assert together.completion_tokens[i] == alone.completion_tokens[0]


def test_seed_reproducibility(tiny, prompts):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=16)
    a = sample_groups(model, tok, prompts, cfg, num_generations=3, seed=7)
    b = sample_groups(model, tok, prompts, cfg, num_generations=3, seed=7)
    c = sample_groups(model, tok, prompts, cfg, num_generations=3, seed=8)
    assert a.completion_tokens == b.completion_tokens and a.texts == b.texts
    assert a.completion_tokens != c.completion_tokens
    # Completions inside a group differ (sampling, not copies).
    assert len({tuple(t) for t in a.completion_tokens[:3]}) > 1


def test_shared_prefill_matches_plain_batching(tiny, prompts):
    model, tok = tiny
    kw = dict(max_new_tokens=10, temperature=0.0)
    run = dict(num_generations=3, return_logprobs=True)
    shared = sample_groups(model, tok, prompts, SamplingConfig(**kw, share_prompt_prefill=True), **run)
    plain = sample_groups(model, tok, prompts, SamplingConfig(**kw, share_prompt_prefill=False), **run)
    assert shared.completion_tokens == plain.completion_tokens
    np.testing.assert_allclose(
        np.concatenate(shared.logprobs), np.concatenate(plain.logprobs), atol=1e-4
    )
    assert shared.stats.prompt_tokens < plain.stats.prompt_tokens


def test_logprobs_match_teacher_forcing(tiny, prompts):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=10)
    r = sample_groups(model, tok, prompts[:2], cfg, num_generations=2, seed=3, return_logprobs=True)
    for i in range(len(r)):
        seq = r.prompt_tokens[i] + r.completion_tokens[i]
        logits = model(mx.array([seq[:-1]]))[0, len(r.prompt_tokens[i]) - 1 :]
        ref = nn.log_softmax(logits, axis=-1)[
            mx.arange(len(r.completion_tokens[i])), mx.array(r.completion_tokens[i])
        ]
        np.testing.assert_allclose(r.logprobs[i], np.array(ref), atol=1e-4)


def test_eos_stops_and_max_tokens(tmp_path, prompts):
    model, tok = load_model(str(make_tiny_model(tmp_path / "eos", seed=2, eos_prob=0.6)))
    r = sample_groups(model, tok, prompts, SamplingConfig(max_new_tokens=50), num_generations=4, seed=0)
    assert sum(r.finished) == len(r)  # with P(eos) ~ 0.6 per step, 50 steps never run out
    assert all(t[-1] == 2 for t in r.completion_tokens)
    assert all(
        spans[-1] == (len(text), len(text))
        for text, spans in zip(r.texts, r.token_offsets, strict=True)
    )
    one = sample_groups(model, tok, prompts, SamplingConfig(max_new_tokens=1), num_generations=2, seed=0)
    assert one.completion_lengths() == [1] * 6


def test_validation_and_edge_cases(tiny, prompts):
    model, tok = tiny
    with pytest.raises(ConfigError, match="num_generations"):
        sample_groups(model, tok, prompts, SamplingConfig(), num_generations=0)
    with pytest.raises(ConfigError, match="top_p"):
        sample_groups(model, tok, prompts, SamplingConfig(top_p=0.0))
    with pytest.raises(OspoError, match="prompt 1 has no tokens"):
        sample_groups(model, tok, [prompts[0], []], SamplingConfig())
    empty = sample_groups(model, tok, [], SamplingConfig(), num_generations=2)
    assert len(empty) == 0 and empty.num_prompts == 0
    single = sample_groups(model, tok, [[1]], SamplingConfig(max_new_tokens=4), num_generations=2)
    assert len(single) == 2  # a one-token prompt has nothing to prefill


# ---------------------------------------------------------------- incremental decoding


@pytest.fixture(scope="module")
def decode(tiny):
    return tiny[1]._tokenizer.decode


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 49151), min_size=0, max_size=30))
def test_offsets_tile_and_extend_prefixes(decode, tokens):
    text, spans = decode_with_offsets(decode, tokens)
    assert text == decode(tokens)
    assert len(spans) == len(tokens)
    _check_offsets(text, spans)
    for i, (_, end) in enumerate(spans):
        prefix = decode(tokens[: i + 1])
        if not prefix.endswith("\ufffd") and i + 1 < len(tokens):
            assert text[:end] == prefix[:end]


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_offsets_of_real_text_with_multibyte_characters(tiny, decode, text):
    tok = tiny[1]
    tokens = tok.encode(text)
    got, spans = decode_with_offsets(decode, tokens)
    assert got == decode(tokens)
    _check_offsets(got, spans)
    # Every token whose bytes complete at least one character owns it; partial ones are empty.
    joined = "".join(got[s:e] for s, e in spans)
    assert joined == got


def test_multibyte_token_spans(decode, tiny):
    tok = tiny[1]
    tokens = tok.encode("a 🙂 b")
    text, spans = decode_with_offsets(decode, tokens)
    emoji = text.index("🙂")
    owners = [i for i, (s, e) in enumerate(spans) if s <= emoji < e]
    assert len(owners) == 1
    partial = [i for i, (s, e) in enumerate(spans) if s == e]
    assert all(spans[i][0] == emoji for i in partial)  # zero-width at the character's start


def test_offsets_fallback_for_non_local_decoders():
    # A decoder whose output for a prefix is not a prefix of the full text.
    def decode(ids):
        return " ".join(str(i) for i in ids).replace("1 2", "12")

    tokens = [1, 2, 3, 1]
    text, spans = decode_with_offsets(decode, tokens)
    assert text == decode(tokens)
    _check_offsets(text, spans)


def test_smaller_kv_growth_step_keeps_the_samples_and_lowers_the_peak(tiny, prompts, monkeypatch):
    import contextlib

    from mlx_lm.models.cache import BatchKVCache

    from ospo_mlx.train import rollout

    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=24)
    options = {"num_generations": 4, "seed": 3, "return_logprobs": True}
    default = BatchKVCache.step
    peaks, outs = {}, {}
    for mode in ("library", "ours"):
        if mode == "library":
            monkeypatch.setattr(rollout, "_kv_growth_step", lambda n: contextlib.nullcontext())
        else:
            monkeypatch.undo()
        mx.clear_cache()
        mx.reset_peak_memory()
        outs[mode] = sample_groups(model, tok, prompts, cfg, **options)
        peaks[mode] = mx.get_peak_memory()
    assert outs["ours"].completion_tokens == outs["library"].completion_tokens
    assert outs["ours"].logprobs == outs["library"].logprobs
    assert peaks["ours"] < peaks["library"]
    assert BatchKVCache.step == default  # restored


def test_stop_sequences_cover_the_answer_tag_as_written(tiny):
    from ospo_mlx.train.rollout import stop_sequences

    _, tok = tiny
    hf = tok._tokenizer
    seqs = stop_sequences(tok, ["</answer>"])
    assert seqs and all("</answer>" in hf.decode(s) for s in seqs)
    for prefix in ("mesh", "a ", "foam."):  # each way the tag follows a word is caught
        ids = hf.encode(prefix + "</answer>", add_special_tokens=False)
        assert any(ids[-len(s) :] == s for s in seqs), prefix
    assert stop_sequences(tok, []) == []


def test_a_stop_string_ends_the_completion_and_stays_in_it(tiny, prompts):
    model, tok = tiny
    hf, eos = tok._tokenizer, set(tok.eos_token_ids)
    cfg = SamplingConfig(max_new_tokens=24)
    opts = {"num_generations": 1, "seed": 5}
    for prompt in prompts:  # one prompt at a time: the same seed then samples the same tokens
        free = sample_groups(model, tok, [prompt], cfg, **opts)
        ids = free.completion_tokens[0]
        cut = next((i for i in range(3, len(ids)) if ids[i] not in eos), None)
        if cut is not None and hf.decode(ids[cut : cut + 1]).strip():
            break
    else:
        pytest.fail("no sampled completion long enough to cut")
    stop = hf.decode(ids[cut : cut + 1])
    first = free.texts[0].find(stop)
    stopped = sample_groups(model, tok, [prompt], replace(cfg, stop_strings=(stop,)), **opts)
    text = stopped.texts[0]
    assert stopped.finished[0] and free.texts[0] != text
    assert text.endswith(stop) and text == free.texts[0][: first + len(stop)]
    assert len(stopped.token_offsets[0]) == len(stopped.completion_tokens[0])
    _check_offsets(text, stopped.token_offsets[0])
