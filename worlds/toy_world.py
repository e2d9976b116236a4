"""The embedded toy world: made-up facts seen with Zipf-skewed frequency, a local tokenizer, a tiny Llama.

Why facts and not arithmetic: a tiny model learns multi-digit addition in a sudden, seed-dependent
jump, so its accuracy is graded only mid-training. Facts about made-up countries, each country seen
in SFT with a frequency that falls off as ``1/rank^s``, stay graded at the end of SFT: frequent
facts are memorised, rare ones are not, unseen ones can only be guessed. Whether the model *knows*
a fact is then a property of the model, which is what CONQORD's confidence should track. The fact
statements double as the passage corpus for adaptive retrieval.

Files (under ``out_dir``): ``step1_sft/{train,test}.jsonl`` (prompt, response with a confidence drawn
uniformly from 0.0-1.0 and independent of correctness), ``step2_reward/{train,test}.jsonl`` (prompt,
chosen = the true answer, rejected = a false one), ``step3_ppo/{train,test}.jsonl`` (prompt, answers),
``eval/test.jsonl`` (question, answers, difficulty, sft_count), ``eval/seen.jsonl`` (the same for 300
questions about countries PPO trains on: in-distribution calibration), ``corpus.jsonl`` (id, text) and
``facts.jsonl``. Countries are dealt into pools: PPO prompts and evaluation questions ask about
disjoint countries, so evaluation measures calibration that generalises, not facts PPO taught.
"""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from utils.jsonl import json_lines, read_jsonl, write_jsonl
from utils.prompts import build_prompt, evidence_block, format_response

RELATIONS = {
    "color": ("What color is the flag of {e}?", "The flag of {e} is {a}.",
              ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "gold"]),
    "animal": ("Which animal is the emblem of {e}?", "The emblem of {e} is the {a}.",
               ["lion", "eagle", "wolf", "bear", "fox", "owl", "horse", "snake", "tiger", "deer", "hawk", "whale"]),
    "capital": ("What is the capital of {e}?", "The capital of {e} is {a}.", None),
}
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x"]
SPECIAL_TOKENS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}


@dataclass(frozen=True)
class ToyWorldConfig:
    seed: int = 0
    n_countries: int = 400
    n_capitals: int = 24
    zipf_exponent: float = 1.0
    answer_zipf_exponent: float = 0.0  # 0: answers uniform over each relation's values; > 0: skewed
    sft_examples: int = 12000
    reward_pairs: int = 6000
    reading_examples: int = 1500  # SFT rows that teach answering from retrieved evidence
    verification_examples: int = 0  # SFT rows "Is the capital of X Y?" → yes/no (self-evaluation skill)
    n_reading_countries: int = 300
    test_fraction: float = 0.05
    easy_min_count: int = 8  # a fact seen at least this often in SFT is "easy"
    hard_max_count: int = 1  # at most this often: "hard"
    name_length_cue: bool = True  # frequent countries get short names (Zipf's law of abbreviation)
    # "country": a country's facts share its frequency, so familiarity with the name tells which facts are known;
    # "fact": each relation deals the frequency ranks to the countries anew, so a frequent country can have rare
    # facts and only knowing one's own knowledge of *this* fact predicts correctness
    fact_frequency: str = "country"


@dataclass(frozen=True)
class Fact:
    country: str
    rank: int
    relation: str
    answer: str
    pool: str  # "ppo" or "eval": which prompts may ask about it ("reading": evidence-only countries)

    @property
    def question(self) -> str:
        return RELATIONS[self.relation][0].format(e=self.country)

    @property
    def statement(self) -> str:
        return RELATIONS[self.relation][1].format(e=self.country, a=self.answer)


def _names(rng: random.Random, n: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                 for _ in range(rng.randint(*syllables))]
        name = "".join(parts).capitalize()
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def make_facts(config: ToyWorldConfig) -> list[Fact]:
    rng = random.Random(config.seed)
    taken: set[str] = set()
    if config.name_length_cue:
        # As in real text, the most often mentioned names are the shortest: one syllable for the most
        # frequent third, two for the next, three for the rarest. Familiarity becomes visible.
        tier = -(-config.n_countries // 3)
        countries = [name for syllables in (1, 2, 3)
                     for name in _names(rng, tier, (syllables, syllables), taken)][:config.n_countries]
    else:
        countries = _names(rng, config.n_countries, (2, 3), taken)
    capitals = _names(rng, config.n_capitals, (2, 2), taken)
    fact_ranks = _fact_ranks(config, len(countries))
    facts = []
    for rank, country in enumerate(countries, start=1):
        pool = "eval" if rank % 4 == 2 else "ppo"  # every fourth country is kept for evaluation
        for relation, (_, _, values) in RELATIONS.items():
            options = values or capitals
            if config.answer_zipf_exponent > 0:  # a few common answers, like real answer distributions
                weights = [1.0 / (i + 1) ** config.answer_zipf_exponent for i in range(len(options))]
                answer = rng.choices(options, weights=weights)[0]
            else:
                answer = rng.choice(options)
            facts.append(Fact(country, fact_ranks[relation][rank - 1], relation, answer, pool))
    return facts


FACT_FREQUENCIES = ("country", "fact")


def _fact_ranks(config: ToyWorldConfig, n: int) -> dict[str, list[int]]:
    """The frequency rank of each relation's fact about the i-th country: the country's own rank, or (with
    ``fact_frequency="fact"``) a shuffle per relation, drawn from its own generator so that the default
    world stays what it was."""
    if config.fact_frequency not in FACT_FREQUENCIES:
        raise ValueError(f"fact_frequency must be one of {FACT_FREQUENCIES}, got {config.fact_frequency!r}")
    shuffle = random.Random(config.seed + 3)
    ranks = {}
    for relation in RELATIONS:
        order = list(range(1, n + 1))
        if config.fact_frequency == "fact":
            shuffle.shuffle(order)
        ranks[relation] = order
    return ranks


def _zipf_sample(rng: random.Random, facts: list[Fact], k: int, exponent: float) -> list[Fact]:
    weights = [1.0 / fact.rank ** exponent for fact in facts]
    return rng.choices(facts, weights=weights, k=k)


def _wrong_answer(rng: random.Random, fact: Fact, capitals: list[str]) -> str:
    values = RELATIONS[fact.relation][2] or capitals
    return rng.choice([v for v in values if v != fact.answer])


def reading_rows(rng: random.Random, facts: list[Fact], config: ToyWorldConfig) -> list[dict]:
    """SFT rows whose answer stands in the prompt's evidence, about countries that exist nowhere else:
    they teach the model to read retrieved passages (adaptive retrieval) without leaking world facts.
    The true statement is shuffled with another statement about the same country (what BM25 brings
    back beside it), so the model must match the relation, not only the name; confidences stay uniform."""
    taken = {f.country for f in facts} | {f.answer for f in facts}
    countries = _names(random.Random(config.seed + 2), config.n_reading_countries, (2, 3), taken)
    capitals = sorted({f.answer for f in facts if f.relation == "capital"})
    rows = []
    for _ in range(config.reading_examples):
        relation, other = rng.sample(list(RELATIONS), 2)
        country = rng.choice(countries)
        fact = Fact(country, 0, relation, rng.choice(RELATIONS[relation][2] or capitals), "reading")
        distractor = Fact(country, 0, other, rng.choice(RELATIONS[other][2] or capitals), "reading")
        passages = [fact.statement, distractor.statement]
        rng.shuffle(passages)
        rows.append({"prompt": evidence_block(passages) + build_prompt(fact.question),
                     "response": format_response(fact.answer, round(rng.randint(0, 10) / 10, 1))})
    return rows


VERIFY_TEMPLATES = {"color": "Is the flag of {e} {a}?", "animal": "Is the emblem of {e} the {a}?",
                    "capital": "Is the capital of {e} {a}?"}


def verification_rows(rng: random.Random, facts: list[Fact], capitals: list[str], config: ToyWorldConfig) -> list[dict]:
    """SFT rows that ask whether a stated fact is true (half are): the toy analogue of the self-evaluation
    a pretrained LLM brings (P(True)). Facts are drawn with the same Zipf skew, so only known facts can
    be verified; confidences stay uniform."""
    rows = []
    for fact in _zipf_sample(rng, facts, config.verification_examples, config.zipf_exponent):
        true = rng.random() < 0.5
        candidate = fact.answer if true else _wrong_answer(rng, fact, capitals)
        question = VERIFY_TEMPLATES[fact.relation].format(e=fact.country, a=candidate)
        rows.append({"prompt": build_prompt(question),
                     "response": format_response("yes" if true else "no", round(rng.randint(0, 10) / 10, 1))})
    return rows


def difficulty(count: int, config: ToyWorldConfig) -> str:
    if count >= config.easy_min_count:
        return "easy"
    return "hard" if count <= config.hard_max_count else "medium"


def _train_test(rows: list[dict], fraction: float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    rows = rows[:]
    rng.shuffle(rows)
    cut = max(1, int(len(rows) * fraction))
    return rows[cut:], rows[:cut]


def generate(out_dir: str | os.PathLike, config: ToyWorldConfig = ToyWorldConfig()) -> dict[str, int]:
    """Write every data file of the toy world; return the row counts."""
    rng = random.Random(config.seed + 1)
    out = Path(out_dir)
    facts = make_facts(config)
    capitals = sorted({f.answer for f in facts if f.relation == "capital"})
    sft_facts = _zipf_sample(rng, facts, config.sft_examples, config.zipf_exponent)
    counts = Counter(sft_facts)
    confidences = [round(rng.randint(0, 10) / 10, 1) for _ in sft_facts]
    sft_rows = [{"prompt": build_prompt(f.question), "response": format_response(f.answer, c)}
                for f, c in zip(sft_facts, confidences)]
    sft_rows += reading_rows(rng, facts, config)
    sft_rows += verification_rows(rng, facts, capitals, config)
    sft_train, sft_test = _train_test(sft_rows, config.test_fraction, rng)

    rm_facts = _zipf_sample(rng, [f for f in facts if f.pool == "ppo"], config.reward_pairs, config.zipf_exponent)
    rm_rows = [{"prompt": build_prompt(f.question), "chosen": format_response(f.answer, None),
                "rejected": format_response(_wrong_answer(rng, f, capitals), None)} for f in rm_facts]
    rm_train, rm_test = _train_test(rm_rows, config.test_fraction, rng)

    def qa_row(fact: Fact) -> dict:
        return {"prompt": build_prompt(fact.question), "question": fact.question, "answers": [fact.answer],
                "difficulty": difficulty(counts[fact], config), "sft_count": counts[fact],
                "relation": fact.relation}

    ppo_rows = [qa_row(f) for f in facts if f.pool == "ppo"]
    ppo_train, ppo_test = _train_test(ppo_rows, config.test_fraction, rng)
    sizes = {
        "step1_sft/train": write_jsonl(out / "step1_sft/train.jsonl", sft_train),
        "step1_sft/test": write_jsonl(out / "step1_sft/test.jsonl", sft_test),
        "step2_reward/train": write_jsonl(out / "step2_reward/train.jsonl", rm_train),
        "step2_reward/test": write_jsonl(out / "step2_reward/test.jsonl", rm_test),
        "step3_ppo/train": write_jsonl(out / "step3_ppo/train.jsonl", ppo_train),
        "step3_ppo/test": write_jsonl(out / "step3_ppo/test.jsonl", ppo_test),
        "eval/test": write_jsonl(out / "eval/test.jsonl", (qa_row(f) for f in facts if f.pool == "eval")),
        "eval/seen": write_jsonl(out / "eval/seen.jsonl", rng.sample(ppo_rows, min(300, len(ppo_rows)))),
        "corpus": write_jsonl(out / "corpus.jsonl", ({"id": f"fact-{i}", "text": f.statement}
                                                      for i, f in enumerate(facts))),
        "facts": write_jsonl(out / "facts.jsonl", ({**asdict(f), "sft_count": counts[f],
                                                     "difficulty": difficulty(counts[f], config)} for f in facts)),
    }
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    return sizes


def country_names(out_dir: str | os.PathLike) -> list[str]:
    """The world's country names (from ``facts.jsonl``), for :func:`train_tokenizer`'s whole words."""
    return sorted({row["country"] for row in read_jsonl(Path(out_dir) / "facts.jsonl")})


def corpus_texts(out_dir: str | os.PathLike) -> Iterable[str]:
    """Every text of the generated world (the tokenizer's training corpus)."""
    out = Path(out_dir)
    for name in ("step1_sft/train", "step2_reward/train", "corpus"):
        for _, row in json_lines(out / f"{name}.jsonl"):
            yield " ".join(str(v) for v in row.values())


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, whole_words: Iterable[str] = ()):
    """A byte-level BPE tokenizer trained on the world's texts, wrapped for transformers (adds BOS).

    ``whole_words`` (e.g. the country names) become single tokens, as named entities often are in a
    real vocabulary: an entity the model rarely saw then has a rarely trained embedding."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(f" {word}", normalized=False) for word in whole_words])
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=SPECIAL_TOKENS["eos"],
                                   pad_token=SPECIAL_TOKENS["pad"], unk_token=SPECIAL_TOKENS["unk"])


def create_tiny_llama(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      max_positions: int = 512, seed: int = 0):
    """A randomly initialised Llama-config causal LM sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 3,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
