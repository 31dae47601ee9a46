"""A seeded synthetic shopping catalog whose relevance depends on attributes the query hides.

Each category (running shoes, backpacks, ...) has four shopper intents. An intent is a hidden
(use, material) pair, e.g. trail running + waterproof gore-tex, and a few context phrases that
imply it without naming it ("for my muddy weekend hikes"). A query is a bare product phrase plus
one context phrase, so the only way to retrieve the right products is to infer the hidden
attributes from the context: exactly what a good query expansion must learn.

The catalog covers every (use, material) combination of every category, so for a query the
category holds products matching both hidden attributes (gain 3), one of them (gain 1), and
neither (gain 0: same-category distractors that stay in the pool as hard negatives).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np

from ospo_mlx.data.pools import build_pool
from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.errors import ConfigError


@dataclass(frozen=True)
class Intent:
    use: str
    material: str
    contexts: tuple[str, ...]


@dataclass(frozen=True)
class Category:
    name: str
    bases: tuple[str, ...]  # how a shopper names the product in a query
    brands: tuple[str, ...]
    intents: tuple[Intent, ...]


def _cat(name: str, bases: str, brands: str, *intents: tuple[str, str, str]) -> Category:
    return Category(
        name,
        tuple(bases.split("|")),
        tuple(brands.split("|")),
        tuple(Intent(u, m, tuple(c.split("|"))) for u, m, c in intents),
    )


CATEGORIES: tuple[Category, ...] = (
    _cat(
        "running shoes",
        "running shoes|sneakers for running|runners",
        "Stridex|Pacewell|Northtrail|Vanta",
        (
            "trail running",
            "waterproof gore-tex",
            "for my muddy weekend hikes|for rainy mountain paths|that survive wet forest tracks",
        ),
        (
            "road running",
            "breathable mesh",
            "for daily jogs on city pavement|for hot summer runs downtown|for my run commute on asphalt",
        ),
        (
            "track sprinting",
            "carbon fiber plate",
            "to shave seconds off my 200m|for race day at the stadium|for interval sessions on the oval",
        ),
        (
            "gym training",
            "cushioned foam",
            "for treadmill sessions and lifting|for indoor cardio classes|for my spin and weights routine",
        ),
    ),
    _cat(
        "backpack",
        "backpack|bag to carry my stuff|daypack",
        "Packwright|Oakline|Sherpa Co|Urbanmule",
        (
            "hiking",
            "ripstop nylon",
            "for three-day treks in the mountains|for scrambling up rocky peaks|for long walks in the national park",
        ),
        (
            "commuting",
            "water-resistant polyester",
            "for biking to the office in the rain|for my laptop on the subway|for the daily train to work",
        ),
        (
            "air travel",
            "hard-shell polycarbonate",
            "that fits an airplane overhead bin|for weekend flights abroad|for hopping between airports",
        ),
        (
            "school",
            "waxed canvas",
            "for my kid's textbooks|for college lectures|for carrying notebooks to class",
        ),
    ),
    _cat(
        "jacket",
        "jacket|coat|outer layer",
        "Fjellrod|Harbor & Pine|Altura|Cobbleton",
        (
            "skiing",
            "insulated down",
            "for the slopes in january|for snowboarding trips|for freezing chairlift rides",
        ),
        (
            "rain",
            "waterproof shell",
            "for the seattle drizzle|for stormy autumn walks|for walking the dog in downpours",
        ),
        (
            "formal",
            "merino wool",
            "to wear over a suit|for a winter wedding|for the office in november",
        ),
        (
            "motorcycle riding",
            "armored leather",
            "for riding my bike on the highway|for long rides on two wheels|to wear on my harley",
        ),
    ),
    _cat(
        "headphones",
        "headphones|earbuds|something to listen to music",
        "Sonara|Quietline|Beatforge|Auralux",
        (
            "workouts",
            "sweatproof silicone",
            "for sweaty gym sessions|that stay in during my runs|for hiit classes",
        ),
        (
            "air travel",
            "active noise cancelling",
            "for long-haul flights|to block out the plane engine|for sleeping on the red-eye",
        ),
        (
            "studio mixing",
            "open-back velour",
            "for producing beats at home|for mixing my band's tracks|for editing podcasts",
        ),
        (
            "gaming",
            "boom microphone",
            "for late night online matches|to talk to my squad while playing|for streaming on twitch",
        ),
    ),
    _cat(
        "coffee maker",
        "coffee maker|coffee machine|something to brew coffee",
        "Brewbay|Crema & Co|Kettleworks|Roastline",
        (
            "espresso",
            "stainless steel boiler",
            "for lattes like at the cafe|for strong shots in the morning|for making cappuccinos at home",
        ),
        (
            "camping",
            "lightweight aluminum",
            "for brewing at the campsite|that works without electricity outdoors|for my van life mornings",
        ),
        (
            "office",
            "large glass carafe",
            "for a team of twelve|for the break room at work|for brewing many cups at once",
        ),
        (
            "single serve",
            "compact pod system",
            "for one cup before work|for my tiny dorm room|for quick single mugs",
        ),
    ),
    _cat(
        "yoga mat",
        "yoga mat|exercise mat|mat for workouts",
        "Lotusform|Groundwell|Asana Lab|Flexa",
        (
            "hot yoga",
            "non-slip natural rubber",
            "for sweaty bikram classes|that doesn't slide when i'm drenched|for heated studio sessions",
        ),
        (
            "travel",
            "foldable thin tpe",
            "that packs into my suitcase|for yoga in hotel rooms|to take on trips",
        ),
        (
            "pilates",
            "thick cushioned foam",
            "that protects my knees|for floor work on hard wood|for gentle core sessions",
        ),
        (
            "eco practice",
            "natural cork",
            "made without plastic|that is sustainable and biodegradable|for an earth-friendly practice",
        ),
    ),
    _cat(
        "tent",
        "tent|shelter for camping|camping tent",
        "Summitra|Campfolk|Ridgeway|Nomadix",
        (
            "backpacking",
            "ultralight silnylon",
            "for carrying on a thru-hike|that weighs almost nothing in my pack|for solo trips on the trail",
        ),
        (
            "family camping",
            "heavy-duty polyester",
            "for me, my wife and three kids|for big group weekends at the lake|with room for the whole family",
        ),
        (
            "winter mountaineering",
            "four-season dyneema",
            "for camping on snow|that survives blizzards above the treeline|for an alpine winter expedition",
        ),
        (
            "festivals",
            "instant pop-up fiberglass",
            "for a music festival weekend|that sets up in seconds at a concert|for a weekend at glastonbury",
        ),
    ),
    _cat(
        "water bottle",
        "water bottle|bottle|something to drink from",
        "Hydrava|Sipwell|Canteen Co|Aquila",
        (
            "cycling",
            "squeezable bpa-free plastic",
            "that fits my bike cage|for long rides on the road bike|to grab while pedaling",
        ),
        (
            "hot drinks",
            "vacuum-insulated steel",
            "that keeps my tea hot all day|for coffee on cold mornings|to keep soup warm at lunch",
        ),
        (
            "kids",
            "spill-proof silicone",
            "for my toddler's lunchbox|for my five year old at school|that my little one can't spill",
        ),
        (
            "backcountry hiking",
            "built-in water filter",
            "to drink from mountain streams|for trips with no taps around|to purify water on the trail",
        ),
    ),
)

COLORS = ("black", "white", "navy", "red", "olive", "grey", "teal", "orange")
MODEL_NAMES = (
    "Apex",
    "Nova",
    "Drift",
    "Summit",
    "Core",
    "Pulse",
    "Echo",
    "Vista",
    "Flux",
    "Terra",
    "Zen",
    "Orbit",
)
PREFIXES = ("", "i need ", "looking for ")


@dataclass
class SyntheticConfig:
    """Size and seed of the generated catalog and tasks."""

    n_products: int = field(
        default=300,
        metadata={"help": "Catalog size (>= 16 x categories covers every combination)."},
    )
    n_train: int = field(default=200, metadata={"help": "Training tasks (distinct queries)."})
    n_test: int = field(
        default=50, metadata={"help": "Test tasks (queries distinct from training)."}
    )
    categories: int = field(
        default=len(CATEGORIES), metadata={"help": f"Categories used, 1..{len(CATEGORIES)}."}
    )
    pool_size: int = field(
        default=100, metadata={"help": "Candidate pool size per task (same category first)."}
    )
    full_gain: float = field(
        default=3.0, metadata={"help": "Gain of a product matching every hidden attribute."}
    )
    partial_gain: float = field(
        default=1.0, metadata={"help": "Gain of a product matching one hidden attribute."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of every random choice."})

    def validate(self) -> None:
        if not 1 <= self.categories <= len(CATEGORIES):
            raise ConfigError(f"categories must be in 1..{len(CATEGORIES)}, got {self.categories}")
        cats = CATEGORIES[: self.categories]
        combos = sum(len(c.intents) ** 2 for c in cats)
        if self.n_products < combos:
            raise ConfigError(
                f"n_products must be >= {combos} so every (use, material) combination exists; got {self.n_products}"
            )
        available = sum(
            len(c.bases) * len(PREFIXES) * sum(len(i.contexts) for i in c.intents) for c in cats
        )
        if self.n_train < 0 or self.n_test < 0 or self.n_train + self.n_test > available:
            raise ConfigError(
                f"n_train + n_test must be between 0 and {available} distinct queries; got {self.n_train} + {self.n_test}"
            )
        if self.partial_gain < 0 or self.full_gain <= 0:
            raise ConfigError("full_gain must be > 0 and partial_gain >= 0")


def _products(cfg: SyntheticConfig, rng: np.random.Generator) -> list[Product]:
    cats = CATEGORIES[: cfg.categories]
    # Round-robin over (category, use, material) so every combination appears before any repeats.
    slots = [
        (c, use.use, mat.material)
        for c in cats
        for use, mat in itertools.product(c.intents, c.intents)
    ]
    products = []
    for i in range(cfg.n_products):
        cat, use, material = slots[i % len(slots)]
        brand = cat.brands[int(rng.integers(len(cat.brands)))]
        model = MODEL_NAMES[int(rng.integers(len(MODEL_NAMES)))]
        color = COLORS[int(rng.integers(len(COLORS)))]
        products.append(
            Product(
                product_id=f"syn-{i:05d}",
                title=f"{brand} {model} {cat.name}",
                brand=brand,
                color=color,
                category=cat.name,
                description=f"{cat.name.capitalize()} made for {use}, with {material}.",
                attributes={"use": use, "material": material},
            )
        )
    return products


def relevance(product: Product, category: str, intent: Intent, cfg: SyntheticConfig) -> float:
    """Gain of a product for a query of `category` with hidden `intent`."""
    if product.category != category:
        return 0.0
    hits = (product.attributes.get("use") == intent.use) + (
        product.attributes.get("material") == intent.material
    )
    return cfg.full_gain if hits == 2 else cfg.partial_gain if hits == 1 else 0.0


def generate(
    cfg: SyntheticConfig | None = None,
) -> tuple[list[Product], list[Task], ConversionReport]:
    """The catalog, the train+test tasks and a report; identical for identical configs."""
    cfg = cfg or SyntheticConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    products = _products(cfg, rng)
    all_ids = [p.product_id for p in products]
    by_category: dict[str, list[Product]] = {}
    for p in products:
        by_category.setdefault(p.category or "", []).append(p)

    queries = [
        (cat, intent, f"{prefix}{base} {context}")
        for cat in CATEGORIES[: cfg.categories]
        for intent in cat.intents
        for context in intent.contexts
        for base in cat.bases
        for prefix in PREFIXES
    ]
    chosen = rng.permutation(len(queries))[: cfg.n_train + cfg.n_test]
    report = ConversionReport(source="synthetic", kind="synthetic", options=asdict(cfg))
    report.read("distinct queries available", len(queries))
    tasks, intents = [], {}
    for n, qi in enumerate(chosen):
        cat, intent, query = queries[int(qi)]
        same = by_category[cat.name]
        targets = {p.product_id: g for p in same if (g := relevance(p, cat.name, intent, cfg)) > 0}
        labelled = list(targets) + [p.product_id for p in same if p.product_id not in targets]
        pool = build_pool(labelled, cfg.pool_size, rng, catalog_ids=all_ids)
        tid = f"syn-{n:04d}"
        split = "train" if n < cfg.n_train else "test"
        tasks.append(
            Task(
                id=tid, kind="query_expansion", targets=targets, query=query, pool=pool, split=split
            )
        )
        intents[tid] = {"category": cat.name, "use": intent.use, "material": intent.material}
    report.extra["hidden_intents"] = intents
    return products, tasks, report
