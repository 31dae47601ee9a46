"""Synthetic files with the real ESCI and H&M schemas and sizes, to test scale without downloads.

`write_hm(HmFilesConfig, out)` writes Kaggle's `articles.csv`, `customers.csv` and
`transactions_train.csv`; `write_esci(EsciFilesConfig, out)` writes the two official parquet
files. Column names, order and types match the real files; sizes default to the real counts and
the value distributions follow them in shape (heavy-tailed customer activity and article
popularity, baskets of a few rows on one day, dates in order; ESCI label shares, ~20 labelled
products per query, the small/large version flags, the train/test split by query, long HTML
descriptions present for about half of the products). The text is made up from word lists.
Everything is seeded and written in chunks, so memory stays bounded by one chunk.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ospo_mlx.errors import ConfigError

# Real counts (Kaggle H&M, 2022; Amazon ESCI shopping_queries_dataset, 2022).
HM_ARTICLES, HM_CUSTOMERS, HM_TRANSACTIONS = 105_542, 1_371_980, 31_788_324
ESCI_ROWS, ESCI_QUERIES, ESCI_PRODUCTS = 2_621_288, 130_652, 1_814_924

_COLOURS = [
    "Black",
    "White",
    "Off_White",
    "Light_Beige",
    "Beige",
    "Grey",
    "Light_Grey",
    "Dark_Grey",
    "Dark_Blue",
    "Blue",
    "Light_Blue",
    "Navy",
    "Red",
    "Dark_Red",
    "Pink",
    "Light_Pink",
    "Yellow",
    "Orange",
    "Green",
    "Dark_Green",
    "Khaki_green",
    "Brown",
    "Gold",
    "Silver",
    "Turquoise",
    "Purple",
    "Lilac",
    "Greenish_Khaki",
    "Mole",
    "Transparent",
]
_COLOURS = tuple(c.replace("_", " ") for c in _COLOURS)
_TYPES = {  # product_type_name -> product_group_name
    "Vest top": "Garment Upper body", "T-shirt": "Garment Upper body",
    "Sweater": "Garment Upper body", "Blouse": "Garment Upper body",
    "Shirt": "Garment Upper body", "Hoodie": "Garment Upper body",
    "Jacket": "Garment Upper body", "Cardigan": "Garment Upper body",
    "Coat": "Garment Upper body", "Top": "Garment Upper body",
    "Trousers": "Garment Lower body", "Shorts": "Garment Lower body",
    "Skirt": "Garment Lower body", "Leggings/Tights": "Garment Lower body",
    "Dress": "Garment Full body", "Jumpsuit/Playsuit": "Garment Full body",
    "Bra": "Underwear", "Underwear bottom": "Underwear", "Socks": "Socks & Tights",
    "Bikini top": "Swimwear", "Swimwear bottom": "Swimwear", "Pyjama set": "Nightwear",
    "Sneakers": "Shoes", "Boots": "Shoes", "Bag": "Accessories", "Hat/beanie": "Accessories",
    "Earring": "Accessories", "Necklace": "Accessories", "Scarf": "Accessories",
    "Belt": "Accessories", "Sunglasses": "Accessories",
}  # fmt: skip
_ADJ = [
    "soft",
    "slim",
    "relaxed",
    "wide",
    "cropped",
    "long",
    "short",
    "oversized",
    "fitted",
    "stretch",
    "cotton",
    "linen",
    "denim",
    "wool",
    "knitted",
    "ribbed",
    "printed",
    "striped",
    "pleated",
    "padded",
    "lightweight",
    "classic",
    "basic",
    "lace",
    "velvet",
    "satin",
    "organic",
    "recycled",
    "waterproof",
    "warm",
    "cosy",
    "sporty",
    "elegant",
    "vintage",
    "chunky",
    "airy",
    "smooth",
]
_NOUNS = [
    "top",
    "shirt",
    "dress",
    "trousers",
    "jacket",
    "shoes",
    "bag",
    "lamp",
    "charger",
    "cable",
    "case",
    "bottle",
    "mug",
    "pillow",
    "blanket",
    "knife",
    "pan",
    "toy",
    "puzzle",
    "book",
    "pen",
    "notebook",
    "headphones",
    "speaker",
    "mouse",
    "keyboard",
    "monitor",
    "stand",
    "shelf",
    "chair",
    "table",
    "rug",
    "curtain",
    "towel",
    "soap",
    "shampoo",
    "brush",
    "vitamin",
    "snack",
    "coffee",
    "tea",
]
_WORDS = (
    _ADJ
    + _NOUNS
    + [
        "with",
        "and",
        "for",
        "in",
        "of",
        "the",
        "a",
        "to",
        "made",
        "from",
        "size",
        "pack",
        "set",
        "men",
        "women",
        "kids",
        "home",
        "office",
        "travel",
        "outdoor",
        "kitchen",
        "garden",
        "fit",
        "comfort",
        "quality",
        "durable",
        "easy",
        "clean",
        "gift",
        "design",
        "color",
        "style",
    ]
)
_BRANDS = [f"{a.capitalize()}{b}" for a in _ADJ[:24] for b in ("co", "line", "wear", "tech")]


def _texts(rng: np.random.Generator, n: int, mean_words: float, pool: list[str]) -> list[str]:
    """`n` made-up sentences of about `mean_words` words (Poisson lengths, at least one)."""
    lengths = np.maximum(rng.poisson(mean_words, n), 1)
    words = rng.integers(0, len(pool), int(lengths.sum()))
    out, at = [], 0
    for n_words in lengths:
        out.append(" ".join(pool[w] for w in words[at : at + n_words]))
        at += n_words
    return out


def _hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """`n` distinct 64-character lowercase hex ids (sha256-like, as H&M's customer ids)."""
    raw = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    raw[:, :4] = np.arange(n, dtype=">u4").view(np.uint8).reshape(n, 4)  # distinct by design
    raw = raw[rng.permutation(n)]
    hexed = np.frombuffer(raw.tobytes().hex().encode(), dtype="S64")
    return pa.array(hexed.astype(str))


@dataclass
class HmFilesConfig:
    """Sizes and seed of generated H&M files (defaults: the real Kaggle counts)."""

    articles: int = field(default=HM_ARTICLES, metadata={"help": "Rows of articles.csv."})
    customers: int = field(default=HM_CUSTOMERS, metadata={"help": "Rows of customers.csv."})
    transactions: int = field(
        default=HM_TRANSACTIONS, metadata={"help": "Rows of transactions_train.csv."}
    )
    days: int = field(default=734, metadata={"help": "Days covered, from 2018-09-20."})
    chunk_rows: int = field(
        default=2_000_000, metadata={"help": "Transaction rows generated and written at a time."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of every drawn value."})

    def validate(self) -> None:
        if min(self.articles, self.customers, self.transactions, self.days, self.chunk_rows) < 1:
            raise ConfigError("articles, customers, transactions, days and chunk_rows must be >= 1")


def _hm_articles(cfg: HmFilesConfig, rng: np.random.Generator) -> pa.Table:
    n = cfg.articles
    n_codes = max(1, n * 47 // 105)  # ~2.2 colour variants per product code, as in the real file
    codes = np.sort(
        rng.choice(np.arange(108775, 959462), size=min(n_codes, 850_687), replace=False)
    )
    product = np.sort(rng.integers(0, len(codes), n))
    first = np.searchsorted(product, product)  # variant number within the product code
    variant = np.arange(n) - first
    article_id = codes[product] * 1000 + 1 + variant * 2 + rng.integers(0, 2, n)
    types = list(_TYPES)
    ptype = rng.integers(0, len(types), len(codes))[product]
    colour = rng.integers(0, len(_COLOURS), n)
    names = _texts(rng, len(codes), 1.2, _ADJ)
    name = pa.array(
        [f"{names[p].capitalize()} {types[t].lower()}" for p, t in zip(product, ptype, strict=True)]
    )
    descs = np.array(_texts(rng, len(codes), 18, _WORDS), dtype=object)
    desc = [d.capitalize() + "." for d in descs[product]]
    desc_mask = rng.random(n) < 0.004  # the real file lacks detail_desc for 0.4% of articles
    dept = rng.integers(0, 250, n)
    cols = {
        "article_id": article_id,
        "product_code": codes[product],
        "prod_name": name,
        "product_type_no": 250 + ptype,
        "product_type_name": pa.array([types[t] for t in ptype]),
        "product_group_name": pa.array([_TYPES[types[t]] for t in ptype]),
        "graphical_appearance_no": 1010001 + (colour % 30),
        "graphical_appearance_name": pa.array(np.array(["Solid", "Stripe", "All over pattern",
                                                        "Melange", "Denim"])[colour % 5]),
        "colour_group_code": 1 + colour,
        "colour_group_name": pa.array(np.array(_COLOURS)[colour]),
        "perceived_colour_value_id": 1 + colour % 7,
        "perceived_colour_value_name": pa.array(np.array(["Dusty Light", "Dark", "Light",
                                                          "Medium Dusty", "Bright", "Medium",
                                                          "Undefined"])[colour % 7]),
        "perceived_colour_master_id": 1 + colour % 20,
        "perceived_colour_master_name": pa.array(np.array(_COLOURS)[colour % 20]),
        "department_no": 1000 + dept * 7,
        "department_name": pa.array([f"{_ADJ[d % len(_ADJ)].capitalize()} {types[d % 31]}"
                                     for d in dept]),
        "index_code": pa.array(np.array(list("ABCDFGHIJS"))[dept % 10]),
        "index_name": pa.array(np.array(["Ladieswear", "Lingeries/Tights", "Baby Sizes 50-98",
                                         "Menswear", "Ladies Accessories", "Sport",
                                         "Children Sizes 92-140", "Divided",
                                         "Children Sizes 134-170", "Children Accessories"])
                               [dept % 10]),
        "index_group_no": 1 + dept % 5,
        "index_group_name": pa.array(np.array(["Ladieswear", "Baby/Children", "Menswear",
                                               "Sport", "Divided"])[dept % 5]),
        "section_no": 2 + dept % 56,
        "section_name": pa.array([f"Section {s}" for s in dept % 56]),
        "garment_group_no": 1001 + dept % 21,
        "garment_group_name": pa.array([f"Garment group {g}" for g in dept % 21]),
        "detail_desc": pa.array(desc, mask=desc_mask),
    }  # fmt: skip
    return pa.table(cols)


def write_hm(cfg: HmFilesConfig, out: str | Path, progress=None) -> dict[str, int]:
    """Write articles.csv, customers.csv and transactions_train.csv into `out`; row counts.

    `progress(rows_done)` is called after each written transaction chunk.
    """
    from pyarrow import csv

    plain = csv.WriteOptions(quoting_style="none")  # unquoted as Kaggle's (the text has no commas)
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    articles = _hm_articles(cfg, rng)
    csv.write_csv(articles, out / "articles.csv", plain)
    customer_ids = _hex_ids(rng, cfg.customers)
    n = cfg.customers
    age = rng.normal(36, 14, n).clip(16, 99).astype(np.int64)
    club = np.array(["ACTIVE", "PRE-CREATE", "LEFT CLUB"])[rng.choice(3, n, p=[0.93, 0.068, 0.002])]
    news = np.array(["NONE", "Regularly", "Monthly"])[rng.choice(3, n, p=[0.64, 0.355, 0.005])]
    customers = pa.table(
        {
            "customer_id": customer_ids,
            "FN": pa.array(np.ones(n), mask=rng.random(n) < 0.65),
            "Active": pa.array(np.ones(n), mask=rng.random(n) < 0.66),
            "club_member_status": pa.array(club, mask=rng.random(n) < 0.0044),
            "fashion_news_frequency": pa.array(news, mask=rng.random(n) < 0.0117),
            "age": pa.array(age, mask=rng.random(n) < 0.0116),
            "postal_code": _hex_ids(rng, n),
        }
    )
    csv.write_csv(customers, out / "customers.csv", plain)
    # Heavy tails: lognormal customer activity, Zipf-like article popularity.
    activity = rng.lognormal(0.0, 1.3, n)
    activity /= activity.sum()
    popularity = 1.0 / (np.arange(cfg.articles) + 10.0) ** 0.9
    popularity = popularity[rng.permutation(cfg.articles)]
    popularity /= popularity.sum()
    article_ids = articles.column("article_id").to_numpy()
    start = dt.date(2018, 9, 20)
    dates = pa.array([(start + dt.timedelta(days=d)).isoformat() for d in range(cfg.days)])
    schema = pa.schema(
        [
            ("t_dat", pa.string()),
            ("customer_id", pa.string()),
            ("article_id", pa.int64()),
            ("price", pa.float64()),
            ("sales_channel_id", pa.int64()),
        ]
    )
    written = 0
    n_chunks = -(-cfg.transactions // cfg.chunk_rows)
    with csv.CSVWriter(out / "transactions_train.csv", schema, write_options=plain) as writer:
        for c in range(n_chunks):
            rows = min(cfg.chunk_rows, cfg.transactions - written)
            # Baskets of a few rows (one customer, one day); a repeated row is a second unit.
            sizes = 1 + rng.geometric(0.3, rows)
            ends = np.cumsum(sizes)
            sizes = sizes[: np.searchsorted(ends, rows) + 1]
            sizes[-1] -= int(sizes.sum()) - rows
            basket = np.repeat(np.arange(len(sizes)), sizes)
            day_lo, day_hi = c * cfg.days // n_chunks, max((c + 1) * cfg.days // n_chunks, 1)
            day = np.sort(rng.integers(day_lo, max(day_hi, day_lo + 1), len(sizes)))
            cust = rng.choice(n, len(sizes), p=activity)
            art = rng.choice(cfg.articles, rows, p=popularity)
            repeat = np.r_[False, (rng.random(rows - 1) < 0.08) & (basket[1:] == basket[:-1])]
            art = np.where(repeat, np.r_[art[:1], art[:-1]], art)
            price = np.round(rng.lognormal(-3.6, 0.6, rows), 16)
            table = pa.table(
                {
                    "t_dat": dates.take(pa.array(np.minimum(day, cfg.days - 1)[basket])),
                    "customer_id": customer_ids.take(pa.array(cust[basket])),
                    "article_id": article_ids[art],
                    "price": price,
                    "sales_channel_id": 1 + (rng.random(rows) < 0.7).astype(np.int64),
                },
                schema=schema,
            )
            writer.write_table(table)
            written += rows
            if progress is not None:
                progress(written)
    return {
        "articles.csv": cfg.articles,
        "customers.csv": cfg.customers,
        "transactions_train.csv": written,
    }


@dataclass
class EsciFilesConfig:
    """Sizes and seed of generated ESCI parquet files (defaults: the real counts)."""

    rows: int = field(default=ESCI_ROWS, metadata={"help": "Labelled (query, product) rows."})
    queries: int = field(default=ESCI_QUERIES, metadata={"help": "Distinct queries."})
    products: int = field(default=ESCI_PRODUCTS, metadata={"help": "Rows of the products file."})
    small_fraction: float = field(
        default=0.37, metadata={"help": "Share of queries in the small version (real: 48k/131k)."}
    )
    chunk_rows: int = field(
        default=200_000, metadata={"help": "Products generated and written at a time."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of every drawn value."})

    def validate(self) -> None:
        if min(self.rows, self.queries, self.products, self.chunk_rows) < 1:
            raise ConfigError("rows, queries, products and chunk_rows must be >= 1")
        if self.queries > self.rows:
            raise ConfigError("queries must be <= rows (every query has a labelled product)")


_LOCALES = ("us", "es", "jp")
_LOCALE_PRODUCTS = (0.67, 0.14, 0.19)  # real shares of the products file
_LOCALE_QUERIES = (0.745, 0.116, 0.139)  # real shares of queries


def _asins(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` distinct ASIN-like ids: 'B0' and 8 characters of [0-9A-Z]."""
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype="S1")
    ids = np.unique(rng.integers(0, 36**8, int(n * 1.01) + 16, dtype=np.int64))
    ids = rng.permutation(ids)[:n]
    digits = np.empty((n, 8), dtype="S1")
    for i in range(8):
        digits[:, 7 - i] = alphabet[ids % 36]
        ids //= 36
    return np.char.add(b"B0", digits.view("S8").ravel()).astype(str)


def write_esci(cfg: EsciFilesConfig, out: str | Path, progress=None) -> dict[str, int]:
    """Write the examples and products parquet files into `out`; row counts.

    `progress(rows_done)` is called after each written chunk (products, then examples).
    """
    import pyarrow.parquet as pq

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    locale_of_product = np.sort(rng.choice(3, cfg.products, p=_LOCALE_PRODUCTS))
    pids = _asins(rng, cfg.products)
    titles = _texts(rng, 20_000, 12, _WORDS)
    descs = [
        "<p>" + t.replace(" and ", "</p><p>") + "</p>" for t in _texts(rng, 20_000, 130, _WORDS)
    ]
    bullets = ["\n".join(t.split(" and ")) for t in _texts(rng, 20_000, 110, _WORDS)]
    colours = pa.array(_COLOURS)
    brands = pa.array(_BRANDS)
    done = 0
    with pq.ParquetWriter(out / "shopping_queries_dataset_products.parquet", _PRODUCTS) as w:
        for lo in range(0, cfg.products, cfg.chunk_rows):
            n = min(cfg.chunk_rows, cfg.products - lo)
            brand = brands.take(pa.array(rng.integers(0, len(_BRANDS), n)))
            title = pc.binary_join_element_wise(
                brand, pa.array(np.array(titles, dtype=object)[rng.integers(0, 20_000, n)]), " "
            )
            w.write_table(
                pa.table(
                    {
                        "product_id": pa.array(pids[lo : lo + n]),
                        "product_title": title,
                        "product_description": pa.array(
                            np.array(descs, dtype=object)[rng.integers(0, 20_000, n)],
                            mask=rng.random(n) < 0.5,
                        ),
                        "product_bullet_point": pa.array(
                            np.array(bullets, dtype=object)[rng.integers(0, 20_000, n)],
                            mask=rng.random(n) < 0.16,
                        ),
                        "product_brand": pc.if_else(
                            pa.array(rng.random(n) < 0.97), brand, pa.nulls(n, pa.string())
                        ),
                        "product_color": pc.if_else(
                            pa.array(rng.random(n) < 0.6),
                            colours.take(pa.array(rng.integers(0, len(_COLOURS), n))),
                            pa.nulls(n, pa.string()),
                        ),
                        "product_locale": pa.array(
                            np.array(_LOCALES)[locale_of_product[lo : lo + n]]
                        ),
                    },
                    schema=_PRODUCTS,
                )
            )
            done += n
            if progress is not None:
                progress(done)
    # Queries: a locale, a size (~20 labelled products, heavy-tailed), version and split flags.
    q_locale = rng.choice(3, cfg.queries, p=_LOCALE_QUERIES)
    weights = rng.lognormal(0.0, 0.6, cfg.queries)
    sizes = 1 + rng.multinomial(cfg.rows - cfg.queries, weights / weights.sum())
    small = rng.random(cfg.queries) < cfg.small_fraction
    test = rng.random(cfg.queries) < 0.25
    query_text = np.array(_texts(rng, cfg.queries, 3, _WORDS), dtype=object)
    bounds = np.searchsorted(locale_of_product, np.arange(4))
    qid = np.repeat(np.arange(cfg.queries), sizes)
    loc = q_locale[qid]
    # Distinct products within a query: a random start in the locale's range plus a stride.
    span = np.maximum(bounds[loc + 1] - bounds[loc], 1)
    within = np.arange(cfg.rows) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    start = rng.integers(0, 1 << 40, cfg.queries)[qid]
    stride = (1 + rng.integers(0, 1 << 20, cfg.queries) * 2)[qid]
    row = bounds[loc] + (start + within * stride) % span
    labels = np.array(list("ESCI"))[rng.choice(4, cfg.rows, p=[0.652, 0.219, 0.029, 0.100])]
    examples = pa.table(
        {
            "example_id": np.arange(cfg.rows, dtype=np.int64),
            "query": pa.array(query_text[qid]),
            "query_id": qid.astype(np.int64),
            "product_id": pa.array(pids[row]),
            "product_locale": pa.array(np.array(_LOCALES)[loc]),
            "esci_label": pa.array(labels),
            "small_version": small[qid].astype(np.int64),
            "large_version": np.ones(cfg.rows, dtype=np.int64),
            "split": pa.array(np.where(test[qid], "test", "train")),
        }
    )
    pq.write_table(
        examples, out / "shopping_queries_dataset_examples.parquet", row_group_size=200_000
    )
    if progress is not None:
        progress(done + cfg.rows)
    return {
        "shopping_queries_dataset_products.parquet": cfg.products,
        "shopping_queries_dataset_examples.parquet": cfg.rows,
    }


_PRODUCTS = pa.schema(
    [
        ("product_id", pa.string()),
        ("product_title", pa.string()),
        ("product_description", pa.string()),
        ("product_bullet_point", pa.string()),
        ("product_brand", pa.string()),
        ("product_color", pa.string()),
        ("product_locale", pa.string()),
    ]
)
