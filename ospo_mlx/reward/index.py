"""Product embeddings of a catalog: in memory, or a prebuilt usearch index on disk.

An index directory holds `index.usearch` (f32, f16 or i8 vectors, cosine metric), `embeddings.npy` (the
same vectors in catalog order, memory-mappable, for exact pool scoring) and `meta.json` (the
key -> product_id map, the catalog hash and the encoder identity). Reopening with a different
encoder, or an index built from another catalog, is refused with a one-line OspoError.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ospo_mlx.data.schema import Product, product_from_dict, product_text, read_jsonl
from ospo_mlx.errors import ConfigError, DataError, OspoError

if TYPE_CHECKING:
    from ospo_mlx.reward.encoder import SentenceEncoder

INDEX_FILE, VECTORS_FILE, META_FILE = "index.usearch", "embeddings.npy", "meta.json"
FORMAT_VERSION = 1
MMAP_BYTES = 256 << 20  # embeddings above this size are memory-mapped, not read into RAM


def _hash_product(h, pid: str, text: str) -> None:
    h.update(pid.encode())
    h.update(b"\0")
    h.update(text.encode())
    h.update(b"\1")


def catalog_hash(catalog: dict[str, Product]) -> str:
    """Hash of the product ids and texts, in catalog order."""
    h = hashlib.sha256()
    for pid, product in catalog.items():
        _hash_product(h, pid, product_text(product))
    return h.hexdigest()[:16]


DTYPES = ("f32", "f16", "i8")


@dataclass
class IndexConfig:
    """How `ospo index build` encodes and stores a catalog."""

    dtype: str = field(
        default="f32",
        metadata={
            "help": "usearch vector dtype: f32, f16 (half the memory) or i8 (a quarter); "
            "embeddings.npy, used for exact pool scores, stays f32."
        },
    )
    batch_size: int = field(
        default=4096, metadata={"help": "Products encoded and added to the index per batch."}
    )
    connectivity: int = field(
        default=16, metadata={"help": "HNSW edges per node (usearch default 16)."}
    )
    expansion_add: int = field(
        default=128, metadata={"help": "HNSW candidate list while adding (usearch default 128)."}
    )
    expansion_search: int = field(
        default=64, metadata={"help": "HNSW candidate list while searching (usearch default 64)."}
    )

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"index dtype must be one of {list(DTYPES)}, got '{self.dtype}'")
        if min(self.batch_size, self.connectivity, self.expansion_add, self.expansion_search) < 1:
            raise ConfigError("batch_size, connectivity and expansions must be >= 1")


def iter_catalog(path: str | Path) -> tuple[int, Iterator[Product]]:
    """The product count of catalog.jsonl and an iterator over its products, read lazily."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    count = 0
    with path.open("rb") as fh:
        for line in fh:
            count += bool(line.strip())
    if count == 0:
        raise DataError(f"{path}: the catalog is empty")

    def products() -> Iterator[Product]:
        for lineno, row in read_jsonl(path):
            yield product_from_dict(row, where=f"{path}:{lineno}")

    return count, products()


def embed_catalog(catalog: dict[str, Product], encoder: SentenceEncoder) -> np.ndarray:
    """(N, dim) float32 embeddings of `product_text` of every product, in catalog order."""
    return encoder.encode([product_text(p) for p in catalog.values()])


@dataclass
class CatalogIndex:
    """Product ids (catalog order) with their embeddings and, when built, a usearch index.

    `search(queries, k)` ranks the whole catalog (one batched usearch call, or an exact
    matrix product when there is no index); `vectors[i]` is product `product_ids[i]`'s embedding.
    """

    product_ids: list[str]
    vectors: np.ndarray
    encoder_identity: dict[str, str]
    catalog_hash: str = ""
    index: object | None = None  # usearch.index.Index

    @classmethod
    def in_memory(
        cls,
        catalog: dict[str, Product],
        encoder: SentenceEncoder,
        cache_dir: str | Path | None = None,
    ) -> CatalogIndex:
        """Embed the catalog now (reusing `cache_dir/<catalog hash>-<encoder>.npy` when present)."""
        chash = catalog_hash(catalog)
        ident = encoder.identity
        cached = Path(cache_dir) / f"{chash}-{ident['fingerprint']}.npy" if cache_dir else None
        vectors = None
        if cached is not None and cached.is_file():
            try:
                vectors = np.load(cached, allow_pickle=False)
            except (OSError, ValueError, EOFError):  # a damaged cache file is recomputed
                vectors = None
        if vectors is None or vectors.shape != (len(catalog), encoder.dim):
            vectors = embed_catalog(catalog, encoder)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as fh:  # temp + rename: a killed run leaves no torn cache
                    np.save(fh, vectors)
                os.replace(tmp, cached)
        return cls(list(catalog), vectors, ident, chash)

    @classmethod
    def build(
        cls,
        catalog: dict[str, Product],
        encoder: SentenceEncoder,
        out_dir: str | Path,
        config: IndexConfig | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> CatalogIndex:
        """Embed the catalog and write the index directory `out_dir`."""
        return cls.build_streaming(
            iter(catalog.values()), len(catalog), encoder, out_dir, config, progress
        )

    @classmethod
    def build_streaming(
        cls,
        products: Iterator[Product],
        count: int,
        encoder: SentenceEncoder,
        out_dir: str | Path,
        config: IndexConfig | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> CatalogIndex:
        """Build from `count` products read one batch at a time (e.g. from `iter_catalog`).

        Each batch is encoded, added to the usearch index and appended to embeddings.npy, so
        memory holds the index (f32: 1.5 KB per product at dim 384; f16 half; i8 a quarter)
        and one batch, never the catalog's text or a second copy of the vectors.
        """
        from usearch.index import Index

        config = config or IndexConfig()
        config.validate()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ident = encoder.identity
        index = Index(
            ndim=encoder.dim,
            metric="cos",
            dtype=config.dtype,
            connectivity=config.connectivity,
            expansion_add=config.expansion_add,
            expansion_search=config.expansion_search,
        )
        h = hashlib.sha256()
        ids: list[str] = []
        seen: set[str] = set()
        vectors_tmp = out / f".{VECTORS_FILE}.tmp"
        with vectors_tmp.open("wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "<f4", "fortran_order": False, "shape": (count, encoder.dim)}
            )
            while len(ids) < count:
                batch = list(itertools.islice(products, min(config.batch_size, count - len(ids))))
                if not batch:
                    break
                texts = []
                for product in batch:
                    if product.product_id in seen:
                        raise OspoError(
                            f"duplicate product_id '{product.product_id}' in the catalog; "
                            "rebuild it with `ospo data`"
                        )
                    seen.add(product.product_id)
                    text = product_text(product)
                    _hash_product(h, product.product_id, text)
                    texts.append(text)
                vecs = encoder.encode(texts).astype(np.float32)
                index.add(np.arange(len(ids), len(ids) + len(batch), dtype=np.uint64), vecs)
                fh.write(np.ascontiguousarray(vecs).tobytes())
                ids.extend(p.product_id for p in batch)
                if progress is not None:
                    progress("products", len(ids), count)
        if len(ids) != count:
            vectors_tmp.unlink(missing_ok=True)
            raise OspoError(f"the catalog has {len(ids)} products, expected {count}")
        del seen
        index.save(str(out / INDEX_FILE))
        os.replace(vectors_tmp, out / VECTORS_FILE)
        meta = {
            "format": FORMAT_VERSION,
            "count": count,
            "dim": encoder.dim,
            "metric": "cos",
            "dtype": config.dtype,
            "catalog_hash": h.hexdigest()[:16],
            "encoder": ident,
            "product_ids": ids,
        }
        (out / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
        vectors = np.load(out / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        return cls(ids, vectors, ident, meta["catalog_hash"], index)

    @classmethod
    def open(
        cls,
        directory: str | Path,
        encoder: SentenceEncoder,
        catalog: dict[str, Product] | None = None,
        view: bool | None = None,
    ) -> CatalogIndex:
        """Open an index directory; `view` memory-maps it (default: only for large indexes)."""
        from usearch.index import Index

        d = Path(directory)
        for name in (META_FILE, INDEX_FILE, VECTORS_FILE):
            if not (d / name).is_file():
                raise OspoError(
                    f"{d}: not an ospo index ({name} missing); build one with `ospo index build`"
                )
        try:
            meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise OspoError(
                f"{d / META_FILE}: invalid JSON ({exc.msg}); rebuild with `ospo index build`"
            ) from None
        if meta.get("format") != FORMAT_VERSION:
            raise OspoError(
                f"{d}: index format {meta.get('format')} is not {FORMAT_VERSION}; rebuild with `ospo index build`"
            )
        ident = encoder.identity
        if meta.get("encoder", {}).get("fingerprint") != ident["fingerprint"]:
            raise OspoError(
                f"{d}: index was built with encoder {meta.get('encoder')} but the encoder is {ident}; "
                "rebuild the index or pass the same --encoder"
            )
        if catalog is not None and meta.get("catalog_hash") != catalog_hash(catalog):
            raise OspoError(
                f"{d}: index was built from a different catalog; rebuild it with `ospo index build`"
            )
        size = (d / VECTORS_FILE).stat().st_size
        view = size > MMAP_BYTES if view is None else view
        vectors = np.load(d / VECTORS_FILE, mmap_mode="r" if view else None, allow_pickle=False)
        index = Index.restore(str(d / INDEX_FILE), view=view)
        if (
            index is None
            or len(index) != meta["count"]
            or vectors.shape != (meta["count"], meta["dim"])
        ):
            raise OspoError(
                f"{d}: index files are inconsistent with meta.json; rebuild with `ospo index build`"
            )
        return cls(list(meta["product_ids"]), vectors, ident, meta.get("catalog_hash", ""), index)

    @property
    def id_to_row(self) -> dict[str, int]:
        if not hasattr(self, "_id_to_row"):
            self._id_to_row = {pid: i for i, pid in enumerate(self.product_ids)}
        return self._id_to_row

    def search(
        self, queries: np.ndarray, k: int, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows of the catalog for each query: `(rows (B, k) int64 with -1 padding, scores)`.

        With a usearch index this is one batched `Index.search` (HNSW; `exact=True` for brute
        force); without one, an exact matrix product. Scores are cosine similarities.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = min(k, len(self.product_ids))
        if self.index is None:
            return top_k(queries @ np.asarray(self.vectors).T, k)
        matches = self.index.search(queries, k, exact=exact)
        keys, dist = np.atleast_2d(matches.keys), np.atleast_2d(matches.distances)
        # One query gives `Matches` (1-D), several give `BatchMatches` with per-row counts.
        counts = np.atleast_1d(getattr(matches, "counts", len(matches)))
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        rows = np.where(valid, keys.astype(np.int64), -1)
        return rows, np.where(valid, 1.0 - dist, -np.inf)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows' top-k columns by score, ties broken by the lower column: `(cols (B, k), scores)`.

    Deterministic, so the batched and the sequential coalition paths rank identically.
    """
    scores = np.atleast_2d(scores)
    n = scores.shape[1]
    k = min(k, n)
    if k < n:
        # argpartition keeps every column tied with the k-th score, then the exact sort decides.
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        cand = scores >= kth
        if cand.sum(axis=1).max() < 4 * k:
            idx = np.argsort(~cand, axis=1, kind="stable")[:, : int(cand.sum(axis=1).max())]
            sub = np.take_along_axis(scores, idx, axis=1)
            sub = np.where(np.take_along_axis(cand, idx, axis=1), sub, -np.inf)
            order = np.lexsort((idx, -sub), axis=1)[:, :k]
            cols = np.take_along_axis(idx, order, axis=1)
            return cols.astype(np.int64), np.take_along_axis(scores, cols, axis=1)
    cols = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return cols.astype(np.int64), np.take_along_axis(scores, cols, axis=1)
