"""MLX BERT sentence encoder loaded from a local sentence-transformers directory.

The directory holds `config.json` (a BERT-family config), `model.safetensors`, `tokenizer.json`
(read with the `tokenizers` library) and optionally `1_Pooling/config.json` (mean or CLS
pooling). Embeddings are pooled over the attention mask and L2-normalized, so the dot product
of two embeddings is their cosine similarity. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np

import ospo_mlx  # noqa: F401  (optimized BLAS before mlx.core)
from ospo_mlx.errors import OspoError
from ospo_mlx.reward.bert import BertConfig, BertModel, Packing, rename_checkpoint_key
from ospo_mlx.safety import load_json, load_tensors


def _read_json(path: Path) -> dict:
    data = load_json(path, "encoder config")
    if not isinstance(data, dict):
        raise OspoError(f"{path}: expected a JSON object; fix or regenerate it")
    return data


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
        weights = load_tensors(directory / "model.safetensors", "encoder weights")
        renamed = {
            new: w for k, w in weights.items() if (new := rename_checkpoint_key(k)) is not None
        }
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
        pooled, _ = self.encode_pooled(texts)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled

    def encode_pooled(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Pooled states before normalization (N, dim) and each text's pooling weight (N,):
        its token count for mean pooling, 1 for CLS. `pooled * weight` is the sum the segment
        credit's stand-in game interpolates (see attribution/surrogate.py)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        weights = np.ones(len(texts), dtype=np.float32)
        if not texts:
            return out, weights
        tokens = self.tokenize(texts)
        if self.pooling == "mean":
            weights = np.array([len(ids) for ids, _ in tokens], dtype=np.float32)
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
        return out, weights

    def _forward(self, batch: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """Pooled (not normalized) states of a length-sorted batch (one lazy graph, one eval)."""
        packing = Packing.build([len(ids) for ids, _ in batch])
        ids = mx.array(np.fromiter((t for tok, _ in batch for t in tok), np.int32))
        types = mx.array(np.fromiter((t for _, typ in batch for t in typ), np.int32))
        hidden = np.array(self.model(ids, types, packing).astype(mx.float32))
        if self.pooling == "cls":
            pooled = hidden[packing.starts]
        else:
            pooled = np.add.reduceat(hidden, packing.starts, axis=0)
            pooled /= np.maximum(packing.lengths[:, None], 1).astype(np.float32)
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
