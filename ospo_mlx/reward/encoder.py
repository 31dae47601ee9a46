"""MLX BERT sentence encoder loaded from a local sentence-transformers directory.

The directory holds `config.json` (a BERT-family config), `model.safetensors`, `tokenizer.json`
(read with the `tokenizers` library) and optionally `1_Pooling/config.json` (mean or CLS
pooling). Embeddings are pooled over the attention mask and L2-normalized, so the dot product
of two embeddings is their cosine similarity. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
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
    """Softmax over the last axis (NumPy on the CPU backend, for the same reason as gelu_erf)."""
    if mx.default_device() != mx.cpu or scores.dtype != mx.float32:
        return mx.softmax(scores, axis=-1)
    s = np.array(scores)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return mx.array(s)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array) -> mx.array:
        positions = mx.arange(input_ids.shape[1])[None, :]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.norm(x)


class BertLayer(nn.Module):
    """One post-LN transformer block: LN(x + attn(x)), then LN(x + ffn(x))."""

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

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, length, d = x.shape
        h = self.n_heads

        def heads(t: mx.array) -> mx.array:
            return t.reshape(b, length, h, d // h).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        attn = _softmax((q * self.scale) @ k.transpose(0, 1, 3, 2) + mask) @ v
        attn = attn.transpose(0, 2, 1, 3).reshape(b, length, d)
        x = self.attn_norm(x + self.attn_out(attn))
        return self.out_norm(x + self.output(self.act(self.intermediate(x))))


class BertModel(nn.Module):
    """BERT encoder returning the last hidden states (no pooler head)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.layers = [BertLayer(cfg) for _ in range(cfg.num_hidden_layers)]

    def __call__(
        self, input_ids: mx.array, token_type_ids: mx.array, attention_mask: mx.array
    ) -> mx.array:
        # Additive mask (B, 1, 1, L): padded keys get a large negative score.
        mask = mx.where(attention_mask[:, None, None, :].astype(mx.bool_), 0.0, -1e9)
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
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

    Texts are tokenized, sorted by length, cut into batches of at most `batch_tokens` padded
    tokens, run through the model and pooled; the result keeps the input order.
    `texts_encoded` and `forward_calls` count the work done (used by tests and benchmarks).
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
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self._identity = _identity(directory, raw_cfg, renamed, self.pooling, self.max_length)
        self.texts_encoded = 0
        self.forward_calls = 0

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def identity(self) -> dict[str, str]:
        """Name and fingerprint that an index records and checks on reopening."""
        return dict(self._identity)

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
            # Sorted by length, so the last row of a batch is its longest one.
            end = start + 1
            while (
                end < len(order)
                and (end - start + 1) * len(tokens[order[end]][0]) <= self.batch_tokens
            ):
                end += 1
            rows = order[start:end]
            out[rows] = self._forward([tokens[i] for i in rows])
            start = end
        self.texts_encoded += len(texts)
        return out

    def _forward(self, batch: list[tuple[list[int], list[int]]]) -> np.ndarray:
        length = max(len(ids) for ids, _ in batch)
        ids = np.zeros((len(batch), length), dtype=np.int32)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, (tok, typ) in enumerate(batch):
            ids[row, : len(tok)] = tok
            types[row, : len(typ)] = typ
            mask[row, : len(tok)] = 1
        m = mx.array(mask)
        hidden = self.model(mx.array(ids), mx.array(types), m)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            w = m[..., None].astype(hidden.dtype)
            pooled = (hidden * w).sum(axis=1) / mx.maximum(w.sum(axis=1), 1e-9)
        pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        self.forward_calls += 1
        return np.array(pooled.astype(mx.float32))


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
