"""The toy world's structure: disjoint pools, graded difficulty, and the optional name-length cue."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from worlds.toy_world import ToyWorldConfig, difficulty, make_facts

_SYLLABLE = re.compile(r"(ai|ou|[aeiou])")


def _syllables(name: str) -> int:
    return len(_SYLLABLE.findall(name.lower()))


def test_ppo_and_eval_ask_about_disjoint_countries():
    facts = make_facts(ToyWorldConfig(n_countries=40))
    ppo = {f.country for f in facts if f.pool == "ppo"}
    evaluation = {f.country for f in facts if f.pool == "eval"}
    assert ppo and evaluation and not ppo & evaluation
    assert len(evaluation) == 10  # every fourth country


@pytest.mark.parametrize(("count", "level"), [(0, "hard"), (1, "hard"), (2, "medium"), (7, "medium"), (8, "easy")])
def test_difficulty_levels_follow_sft_counts(count, level):
    assert difficulty(count, ToyWorldConfig()) == level


def test_name_length_cue_gives_frequent_countries_short_names():
    config = ToyWorldConfig(n_countries=60)
    ranked = sorted({(f.rank, f.country) for f in make_facts(config)})
    syllables = [_syllables(name) for _, name in ranked]
    assert syllables == [1] * 20 + [2] * 20 + [3] * 20
    assert len({name for _, name in ranked}) == 60


def test_without_the_cue_name_length_says_nothing_about_rank():
    ranked = sorted({(f.rank, f.country) for f in make_facts(ToyWorldConfig(n_countries=300, name_length_cue=False))})
    by_tier = Counter()
    for rank, name in ranked:
        by_tier[(rank - 1) // 100] += _syllables(name)
    assert max(by_tier.values()) - min(by_tier.values()) < 25  # about 250 syllables per tier of 100 names


def test_a_countrys_facts_share_its_frequency_by_default():
    facts = make_facts(ToyWorldConfig(n_countries=40))
    ranks = {}
    for f in facts:
        ranks.setdefault(f.country, set()).add(f.rank)
    assert all(len(r) == 1 for r in ranks.values())
    assert sorted(r.pop() for r in ranks.values()) == list(range(1, 41))


def test_fact_frequency_deals_each_relations_ranks_anew_and_changes_nothing_else():
    from scipy import stats

    n = 300
    base = make_facts(ToyWorldConfig(n_countries=n))
    mixed = make_facts(ToyWorldConfig(n_countries=n, fact_frequency="fact"))
    # the same countries, answers and pools: only how often each fact is seen in SFT changes
    assert [(f.country, f.relation, f.answer, f.pool) for f in base] == \
        [(f.country, f.relation, f.answer, f.pool) for f in mixed]
    for relation in ("color", "animal", "capital"):
        assert sorted(f.rank for f in mixed if f.relation == relation) == list(range(1, n + 1))
    by_country: dict[str, list[int]] = {}
    for f in mixed:
        by_country.setdefault(f.country, []).append(f.rank)
    assert sum(len(set(r)) == 3 for r in by_country.values()) > 0.95 * n
    # a country's familiarity (its position, which the name-length cue shows) no longer predicts a fact's rank
    position = {country: i for i, country in enumerate(by_country)}
    rho = stats.spearmanr([position[f.country] for f in mixed], [f.rank for f in mixed]).statistic
    assert abs(rho) < 0.1


def test_unknown_fact_frequency_is_refused():
    with pytest.raises(ValueError, match="fact_frequency"):
        make_facts(ToyWorldConfig(n_countries=8, fact_frequency="relation"))
