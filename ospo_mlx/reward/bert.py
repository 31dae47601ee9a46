"""BERT in MLX for sentence embeddings: config, packed unpadded attention, checkpoint names.

The encoder runs on ragged batches without padding (`Packing`): rows of similar length share an
attention group, so no FLOPs go to pad tokens. GELU and softmax have NumPy paths on the CPU
backend, where MLX's transcendentals are slow.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import ospo_mlx  # noqa: F401  (optimized BLAS before mlx.core)


@dataclass
class BertConfig:
    """The subset of a Hugging Face BERT config the forward pass needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, cfg: dict) -> BertConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in cfg.items() if k in names})


# Rational minimax approximation of erf on [-4, 4] (erf is +-1 to float32 precision outside):
# erf(u) ~= u * P(u^2) / Q(u^2), absolute error < 1e-6, i.e. float32 rounding, so this is the
# exact (erf) GELU, not the tanh approximation.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip
_CHUNK_ROWS = 64  # rows per NumPy chunk: keeps the temporaries in cache


def _gelu_numpy_inplace(x: np.ndarray) -> None:
    """x <- 0.5 x (1 + erf(x / sqrt 2)) on a float32 block, with in-place temporaries."""
    u = x * np.float32(0.7071067811865476)
    np.clip(u, -4.0, 4.0, out=u)
    z = u * u
    p = z * np.float32(_ERF_P[0])
    p += np.float32(_ERF_P[1])
    for c in _ERF_P[2:]:
        p *= z
        p += np.float32(c)
    q = z * np.float32(_ERF_Q[0])
    q += np.float32(_ERF_Q[1])
    for c in _ERF_Q[2:]:
        q *= z
        q += np.float32(c)
    p *= u
    p /= q
    p += np.float32(1.0)
    p *= np.float32(0.5)
    x *= p


def gelu_erf(x: mx.array) -> mx.array:
    """Exact (erf) GELU. On the CPU backend it runs in NumPy: MLX's CPU erf/exp are scalar
    loops (~30 ns/element here), ten times slower than NumPy's SIMD ops on cache-sized chunks."""
    if mx.default_device() != mx.cpu or x.dtype != mx.float32:
        return nn.gelu(x)
    out = np.array(x)  # evaluates the graph so far; a private float32 copy we may overwrite
    flat = out.reshape(-1, out.shape[-1])
    for start in range(0, flat.shape[0], _CHUNK_ROWS):
        _gelu_numpy_inplace(flat[start : start + _CHUNK_ROWS])
    return mx.array(out)


def _softmax(scores: mx.array) -> mx.array:
    """Softmax over the last axis. On the CPU backend the exp runs in NumPy (SIMD, ~0.5 ns per
    element here vs ~30 ns for MLX's CPU exp); the max and the normalization stay in MLX."""
    if mx.default_device() != mx.cpu or scores.dtype != mx.float32:
        return mx.softmax(scores, axis=-1)
    s = np.array(scores - scores.max(axis=-1, keepdims=True))
    np.exp(s, out=s)
    e = mx.array(s)
    return e / e.sum(axis=-1, keepdims=True)


_BUCKET = 8  # attention groups: rows whose lengths round up to the same multiple of 8


@dataclass
class Packing:
    """Where the tokens of a batch of sequences sit once packed into one (T, d) matrix.

    The position-wise layers (98% of the FLOPs) run on the packed tokens, so padding costs
    nothing there; only attention needs a (rows, L) layout, built per group of rows of similar
    length (`groups`: gather index into the packed tokens or None for the identity, row count,
    padded length, additive key mask or None) and undone by `unpad` (None: identity).
    """

    positions: mx.array  # (T,) position of each token in its sequence
    starts: np.ndarray  # (B,) first packed token of each sequence
    lengths: np.ndarray  # (B,)
    groups: list[tuple[mx.array | None, int, int, mx.array | None]]
    unpad: mx.array | None

    @classmethod
    def build(cls, lengths: list[int]) -> Packing:
        lens = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        positions = np.concatenate([np.arange(n) for n in lens]).astype(np.int32)
        buckets = -(-lens // _BUCKET)
        groups: list[tuple[mx.array | None, int, int, mx.array | None]] = []
        unpad = np.empty(int(lens.sum()), dtype=np.int64)
        offset = 0
        for b in _runs(buckets):
            g_lens, g_starts = lens[b], starts[b]
            n, length = len(g_lens), int(g_lens.max())
            cols = np.arange(length)[None, :]
            valid = cols < g_lens[:, None]
            # Padding slots read the row's first token; the key mask removes them.
            gather = np.where(valid, g_starts[:, None] + cols, g_starts[:, None])
            unpad[gather[valid]] = offset + np.flatnonzero(valid.reshape(-1))
            offset += n * length
            mask = None
            if not valid.all():
                mask = mx.array(np.where(valid, 0.0, -1e9).astype(np.float32)[:, None, None, :])
            groups.append((mx.array(gather.reshape(-1).astype(np.int32)), n, length, mask))
        if len(groups) == 1 and groups[0][3] is None:
            # One group without padding (e.g. a single sequence): no gather, no copies.
            _, n, length, _ = groups[0]
            return cls(mx.array(positions), starts, lens, [(None, n, length, None)], None)
        return cls(mx.array(positions), starts, lens, groups, mx.array(unpad.astype(np.int32)))


def _runs(keys: np.ndarray) -> list[slice]:
    """Slices of maximal runs of equal consecutive values (rows come sorted by length)."""
    cuts = np.flatnonzero(np.diff(keys)) + 1
    bounds = [0, *cuts.tolist(), len(keys)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(
        self, input_ids: mx.array, token_type_ids: mx.array, positions: mx.array
    ) -> mx.array:
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.norm(x)


@dataclass
class _Fused:
    """Query, key and value projections stacked into one (3d, d) matmul (a plain attribute,
    so nn.Module does not register it as a parameter)."""

    weight: mx.array
    bias: mx.array


class BertLayer(nn.Module):
    """One post-LN transformer block over packed tokens: LN(x + attn(x)), then LN(x + ffn(x))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.scale = (d // self.n_heads) ** -0.5
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(d, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, d)
        self.out_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        # BERT's "gelu" is the exact erf form; "gelu_new"/"gelu_pytorch_tanh" is the tanh one.
        self.act = gelu_erf if cfg.hidden_act == "gelu" else nn.gelu_approx
        self.fused: _Fused | None = None

    def fuse(self) -> None:
        """Stack the q/k/v weights (after loading); the stacked copy is what __call__ uses."""
        w = mx.concatenate([self.query.weight, self.key.weight, self.value.weight])
        b = mx.concatenate([self.query.bias, self.key.bias, self.value.bias])
        mx.eval(w, b)
        self.fused = _Fused(w, b)

    def __call__(self, x: mx.array, packing: Packing) -> mx.array:
        d = x.shape[-1]
        h = self.n_heads
        if self.fused is None:
            self.fuse()
        qkv = mx.addmm(self.fused.bias, x, self.fused.weight.T)  # (T, 3d)
        outs = []
        for gather, n, length, mask in packing.groups:
            rows = qkv if gather is None else qkv[gather]
            t = rows.reshape(n, length, 3, h, d // h).transpose(2, 0, 3, 1, 4)
            scores = (t[0] * self.scale) @ t[1].transpose(0, 1, 3, 2)
            if mask is not None:
                scores = scores + mask
            o = _softmax(scores) @ t[2]  # (n, h, L, dh)
            outs.append(o.transpose(0, 2, 1, 3).reshape(n * length, d))
        attn = outs[0] if len(outs) == 1 else mx.concatenate(outs)
        if packing.unpad is not None:
            attn = attn[packing.unpad]
        x = self.attn_norm(x + self.attn_out(attn))
        return self.out_norm(x + self.output(self.act(self.intermediate(x))))


class BertModel(nn.Module):
    """BERT encoder over packed tokens, returning the last hidden states (T, d) (no pooler)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.layers = [BertLayer(cfg) for _ in range(cfg.num_hidden_layers)]

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array, packing: Packing) -> mx.array:
        x = self.embeddings(input_ids, token_type_ids, packing.positions)
        for layer in self.layers:
            x = layer(x, packing)
        return x


# Hugging Face parameter names -> ours (after stripping an optional "bert." prefix).
_RENAMES = (
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("attention.self.query.", "query."),
    ("attention.self.key.", "key."),
    ("attention.self.value.", "value."),
    ("attention.output.dense.", "attn_out."),
    ("attention.output.LayerNorm.", "attn_norm."),
    ("intermediate.dense.", "intermediate."),
    ("output.dense.", "output."),
    ("output.LayerNorm.", "out_norm."),
    ("encoder.layer.", "layers."),
)


def rename_checkpoint_key(key: str) -> str | None:
    if key.startswith("bert."):
        key = key[len("bert.") :]
    if key.startswith(("pooler.", "cls.")) or key.endswith("position_ids"):
        return None  # pretraining heads and buffers the encoder does not use
    for old, new in _RENAMES:
        key = key.replace(old, new)
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
    return key.replace(".gamma", ".weight").replace(".beta", ".bias")
