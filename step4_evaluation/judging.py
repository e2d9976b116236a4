"""Step 4's judging: which judge each benchmark gets (``--judge``), the checks it needs before any generation,
and one predictions record per question with its verdict.

Conventions: ``--judge auto`` is TruthfulQA's reference metric on truthfulqa and exact match elsewhere; a
labelled set (``toy/seen``) is judged as its kind. A record's ``correct`` is 1, 0, or None where the judgment
failed (an LLM judge's outage: counted in ``judge_failures``, left out of the metrics, retried on the next run
from the judge's cache); ``confidence`` is None where the response states none.
"""
from __future__ import annotations

from urllib.parse import urlparse

from step4_evaluation import judges
from step4_evaluation.benchmarks import benchmark_kind
from step4_evaluation.confidence_readout import expected_confidence
from step4_evaluation.settings import JudgeSettings
from utils.errors import UserError

JUDGES = ("auto", "exact_match", "token_f1", "truthfulqa_reference", "llm")


def judge_name(judge: str, benchmark: str) -> str:
    """The judge ``--judge`` picks for ``benchmark``."""
    if judge != "auto":
        return judge
    return "truthfulqa_reference" if benchmark_kind(benchmark) == "truthfulqa" else "exact_match"


def check_judging(settings: JudgeSettings, questions: dict[str, list[dict]]) -> None:
    """What the judges need, refused before any generation (judging comes after it)."""
    for benchmark, items in questions.items():
        if judge_name(settings.judge, benchmark) == "truthfulqa_reference" and any(not q.get("incorrect_answers")
                                                                              for q in items):
            raise UserError(f"--judge truthfulqa_reference needs incorrect reference answers, which --benchmarks "
                            f"{benchmark} does not have; use exact_match, token_f1 or llm")
    if settings.judge != "llm":
        return
    from step4_evaluation.llm_judge import api_key

    url = urlparse(settings.judge_base_url) if settings.judge_base_url is not None else None
    if url is not None and (url.scheme not in ("http", "https") or not url.netloc):  # else: every request fails
        raise UserError(f"--judge_base_url {settings.judge_base_url}: not an http(s) URL; give the judge server's "
                        "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    try:
        api_key(settings.judge_api_key_env)
    except ValueError as err:
        raise UserError(f"--judge llm: {err}; export it, or name another with --judge_api_key_env") from None


class Judging:
    """Chooses the judge per benchmark and runs it; LLM verdicts are cached on disk by the judge."""

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self.llm = self._llm_judge() if settings.judge == "llm" else None

    def name(self, benchmark: str) -> str:
        return judge_name(self.settings.judge, benchmark)

    def verdicts(self, benchmark: str, questions: list[dict], answers: list[str]) -> list[judges.Verdict]:
        name = self.name(benchmark)
        benchmark = benchmark_kind(benchmark)
        if name == "llm":
            task = "truthfulqa" if benchmark == "truthfulqa" else "qa"
            items = [{"question": q["question"], "prediction": a, "correct_answers": q["answers"],
                      "incorrect_answers": q.get("incorrect_answers") or [], "task": task}
                     for q, a in zip(questions, answers)]
            return self.llm.judge_many(items)
        if name == "truthfulqa_reference":  # check_judging made sure of the incorrect answers
            return [judges.judge_truthfulqa_reference(a, q["answers"], q.get("incorrect_answers") or [],
                                                      metric=self.settings.truthfulqa_metric)
                    for q, a in zip(questions, answers)]
        single = judges.judge_token_f1 if name == "token_f1" else judges.judge_exact_match
        return [single(a, q["answers"]) for q, a in zip(questions, answers)]

    def _llm_judge(self):
        from step4_evaluation.llm_judge import LLMJudge

        try:
            s = self.settings
            return LLMJudge(base_url=s.judge_base_url, model=s.judge_model, api_key_env=s.judge_api_key_env,
                            cache_path=s.judge_cache, max_concurrency=s.judge_concurrency,
                            max_retries=s.judge_max_retries, timeout=s.judge_timeout)
        except ValueError as err:
            raise UserError(f"--judge llm: {err}") from None


def judged_records(questions: list[dict], responses: dict[str, str], method, verdicts_of,
                   distributions: dict[str, list[float]] | None = None) -> list[dict]:
    """One record per question. With ``distributions`` (the expected readout), ``confidence`` is the mean of
    the response's distribution and ``stated_confidence`` the number it wrote."""
    parsed = {q["id"]: method.parse(responses[q["id"]]) for q in questions}
    verdicts = verdicts_of([parsed[q["id"]].answer for q in questions])
    records = []
    for q, verdict in zip(questions, verdicts):
        p = parsed[q["id"]]
        record = {"id": q["id"], "question": q["question"], "response": responses[q["id"]],
                  "answer": p.answer, "confidence": p.confidence.value, "confidence_status": p.confidence.status,
                  "correct": None if verdict.correct is None else int(verdict.correct),
                  "judge": verdict.judge, "judge_status": verdict.status, "judge_score": verdict.score,
                  "judge_reason": verdict.reason, "gold": q["answers"], "difficulty": q.get("difficulty")}
        if q.get("popularity") is not None:
            record["popularity"] = q["popularity"]
        if distributions is not None:
            distribution = distributions.get(q["id"])
            record.update(stated_confidence=p.confidence.value, confidence_distribution=distribution,
                          confidence=None if distribution is None else expected_confidence(distribution))
        records.append(record)
    return records
