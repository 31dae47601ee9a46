"""MLX BERT sentence encoder loaded from a local sentence-transformers directory.

The directory holds `config.json` (a BERT-family config), `model.safetensors`, `tokenizer.json`
(read with the `tokenizers` library) and optionally `1_Pooling/config.json` (mean or CLS
pooling). Embeddings are pooled over the attention mask and L2-normalized, so the dot product
of two embeddings is their cosine similarity. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import ospo_mlx  # noqa: F401  (optimized BLAS before mlx.core)
from ospo_mlx.errors import OspoError


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


def _rename(key: str) -> str | None:
    if key.startswith("bert."):
        key = key[len("bert.") :]
    if key.startswith(("pooler.", "cls.")) or key.endswith("position_ids"):
        return None  # pretraining heads and buffers the encoder does not use
    for old, new in _RENAMES:
        key = key.replace(old, new)
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
    return key.replace(".gamma", ".weight").replace(".beta", ".bias")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OspoError(f"{path}: invalid JSON ({exc.msg})") from None


def _pooling_mode(directory: Path) -> str:
    """'mean' or 'cls' from the sentence-transformers pooling config (mean when absent)."""
    for cfg_path in sorted(directory.glob("*_Pooling/config.json")):
        cfg = _read_json(cfg_path)
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
        if cfg.get("pooling_mode_mean_tokens", True):
            return "mean"
        raise OspoError(f"{cfg_path}: only mean and CLS pooling are supported")
    return "mean"


class SentenceEncoder:
    """Batched text -> L2-normalized embedding with an MLX BERT.

    Texts are tokenized, sorted by length, cut into batches of at most `batch_tokens` tokens,
    packed without padding (see `Packing`), run through the model and pooled; the result keeps
    the input order.
    `texts_encoded`, `tokens_encoded` and `forward_calls` count the work done (used by tests and
    benchmarks; `flops_per_token` turns tokens into FLOPs).
    """

    def __init__(self, directory: str | Path, max_length: int = 256, batch_tokens: int = 8192):
        from tokenizers import Tokenizer

        directory = Path(directory)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (directory / name).is_file():
                raise OspoError(
                    f"{directory}: missing {name}; pass a local sentence-transformers directory "
                    "(config.json, model.safetensors, tokenizer.json)"
                )
        raw_cfg = _read_json(directory / "config.json")
        if raw_cfg.get("model_type", "bert") != "bert":
            # RoBERTa-style models offset positions by the padding index; not handled here.
            raise OspoError(
                f"{directory}: model_type '{raw_cfg.get('model_type')}' is not supported; "
                "use a BERT-family encoder (MiniLM, bge-small, e5-small)"
            )
        self.directory = directory
        self.config = BertConfig.from_dict(raw_cfg)
        self.pooling = _pooling_mode(directory)
        self.max_length = min(max_length, self.config.max_position_embeddings)
        self.batch_tokens = batch_tokens
        self.model = BertModel(self.config)
        weights = mx.load(str(directory / "model.safetensors"))
        renamed = {new: w for k, w in weights.items() if (new := _rename(k)) is not None}
        try:
            self.model.load_weights(list(renamed.items()), strict=True)
        except ValueError as exc:
            raise OspoError(f"{directory}: weights do not match a BERT encoder ({exc})") from None
        self.model.eval()
        mx.eval(self.model.parameters())
        for layer in self.model.layers:
            layer.fuse()
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self._identity = _identity(directory, raw_cfg, renamed, self.pooling, self.max_length)
        self.texts_encoded = 0
        self.tokens_encoded = 0
        self.forward_calls = 0

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def identity(self) -> dict[str, str]:
        """Name and fingerprint that an index records and checks on reopening."""
        return dict(self._identity)

    @property
    def flops_per_token(self) -> int:
        """Multiply-add FLOPs per token of the position-wise matmuls (attention scores, which
        grow with the sequence length, are ~2% more at 20-40 tokens and not counted)."""
        c = self.config
        return (
            2
            * c.num_hidden_layers
            * (4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size)
        )

    def tokenize(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return [(e.ids, e.type_ids) for e in encodings]

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 L2-normalized embeddings of `texts`, in input order."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self.tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: len(tokens[i][0]))
        start = 0
        while start < len(order):
            # Tokens are packed (no padding in the position-wise layers), so the budget counts
            # real tokens; every batch holds at least one text.
            end, budget = start + 1, self.batch_tokens - len(tokens[order[start]][0])
            while end < len(order) and len(tokens[order[end]][0]) <= budget:
                budget -= len(tokens[order[end]][0])
                end += 1
            rows = order[start:end]
            out[rows] = self._forward([tokens[i] for i in rows])
            start = end
        self.texts_encoded += len(texts)
        self.tokens_encoded += sum(len(ids) for ids, _ in tokens)
        return out

    def _forward(self, batch: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """Pooled, normalized embeddings of a length-sorted batch (one lazy graph, one eval)."""
        packing = Packing.build([len(ids) for ids, _ in batch])
        ids = mx.array(np.fromiter((t for tok, _ in batch for t in tok), np.int32))
        types = mx.array(np.fromiter((t for _, typ in batch for t in typ), np.int32))
        hidden = np.array(self.model(ids, types, packing).astype(mx.float32))
        if self.pooling == "cls":
            pooled = hidden[packing.starts]
        else:
            pooled = np.add.reduceat(hidden, packing.starts, axis=0)
            pooled /= np.maximum(packing.lengths[:, None], 1).astype(np.float32)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        self.forward_calls += 1
        return pooled


def _identity(
    directory: Path, cfg: dict, weights: dict[str, mx.array], pooling: str, max_length: int
) -> dict[str, str]:
    """A stable fingerprint: config, pooling, weight shapes and a few weight values."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update(f"{pooling}:{max_length}".encode())
    for key in sorted(weights):
        w = weights[key]
        h.update(f"{key}:{tuple(w.shape)}".encode())
        # A strided sample of values catches fine-tuned weights with identical shapes.
        flat = np.array(w.reshape(-1)[:: max(1, w.size // 64)].astype(mx.float32))
        h.update(np.round(flat, 6).tobytes())
    return {
        "name": directory.name if directory.name != "model" else directory.parent.name,
        "fingerprint": h.hexdigest()[:16],
    }


_CACHE: dict[tuple[str, int], SentenceEncoder] = {}


def load_encoder(directory: str | Path | None = None, max_length: int = 256) -> SentenceEncoder:
    """The encoder in `directory` (default: the embedded all-MiniLM-L6-v2), loaded once per process."""
    if directory is None:
        from ospo_mlx.models.assets import minilm_dir

        directory = minilm_dir()
    key = (str(Path(directory).resolve()), max_length)
    if key not in _CACHE:
        _CACHE[key] = SentenceEncoder(directory, max_length=max_length)
    return _CACHE[key]
