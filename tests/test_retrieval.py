"""Adaptive retrieval: passage loading, BM25, the threshold sweep and its plot."""
from __future__ import annotations

import json

import pytest

from step4_evaluation.retrieval import BM25Retriever, load_passages, plot_sweep, threshold_sweep
from utils.data import DataError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_passages_names_file_line_and_key(tmp_path):
    good = {"id": "a", "text": "The capital of Zorbia is Quelt."}
    assert load_passages(_write(tmp_path / "ok.jsonl", [good])) == [good]
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing key 'text'"):
        load_passages(_write(tmp_path / "bad.jsonl", [good, {"id": "b"}]))
    with pytest.raises(DataError, match=r"json.jsonl:1: not valid JSON"):
        load_passages(_write(tmp_path / "json.jsonl", ["{nope"]))
    with pytest.raises(DataError, match=r"int.jsonl:1: key 'text' must be a string, got int"):
        load_passages(_write(tmp_path / "int.jsonl", [{"id": "c", "text": 7}]))
    with pytest.raises(DataError, match="no passages"):
        load_passages(_write(tmp_path / "empty.jsonl", []))
    with pytest.raises(DataError, match="no such file"):
        load_passages(tmp_path / "absent.jsonl")


def test_bm25_finds_the_statement_about_the_asked_country(toy_world_dir):
    passages = load_passages(toy_world_dir / "corpus.jsonl")
    facts = [json.loads(line) for line in (toy_world_dir / "facts.jsonl").read_text().splitlines()]
    retriever = BM25Retriever(passages)
    questions = [f"What is the capital of {f['country']}?" for f in facts if f["relation"] == "capital"][:10]
    answers = [f["answer"] for f in facts if f["relation"] == "capital"][:10]
    for hits, question, answer in zip(retriever.retrieve(questions, k=2), questions, answers):
        assert len(hits) == 2
        country = question.split("of ")[1].rstrip("?")
        assert any(country in h and answer in h for h in hits), (question, hits)


def test_threshold_sweep_hand_example():
    # confidences 0.1, 0.5, 0.9; correct without retrieval 0,1,1; with retrieval 1,0,1
    rows = threshold_sweep([0.1, 0.5, 0.9], [0, 1, 1], [1, 0, 1], thresholds=[0.0, 0.3, 0.6, 1.01])
    assert [r["retrieval_rate"] for r in rows] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    # τ=0: no retrieval (2/3); τ=0.3: q1 retrieved → 1,1,1; τ=0.6: q1,q2 → 1,0,1; τ=1.01: all → 1,0,1
    assert [r["accuracy"] for r in rows] == pytest.approx([2 / 3, 1, 2 / 3, 2 / 3])


def test_plot_sweep_writes_png(tmp_path):
    path = plot_sweep(threshold_sweep([0.2, 0.8], [0, 1], [1, 1]), tmp_path / "r.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert not list(tmp_path.glob(".*tmp"))


def test_tau_on_dev_takes_the_best_dev_accuracy_then_the_least_retrieval_then_the_smallest_tau():
    from step4_evaluation.retrieval import tau_on_dev

    dev_sweep = [{"tau": tau, "retrieval_rate": rate, "accuracy": acc}
                 for tau, rate, acc in [(0.0, 0.0, 0.5), (0.3, 0.4, 0.7), (0.5, 0.2, 0.7), (0.6, 0.2, 0.7),
                                        (1.01, 1.0, 0.6)]]
    # test: confidences 0.1, 0.4, 0.8; right without retrieval 0,1,1; with it 1,0,0
    chosen = tau_on_dev(dev_sweep, [0.1, 0.4, 0.8], [0, 1, 1], [1, 0, 0], bootstrap=50, seed=3)
    assert chosen["tau"] == 0.5 and chosen["dev_accuracy"] == 0.7 and chosen["dev_retrieval_rate"] == 0.2
    # τ = 0.5 retrieves for 0.1 and 0.4: answers 1, 0, 1
    assert chosen["test_accuracy"] == pytest.approx(2 / 3) and chosen["test_retrieval_rate"] == pytest.approx(2 / 3)
    assert chosen["test_accuracy_never"] == pytest.approx(2 / 3)
    assert chosen["test_accuracy_always"] == pytest.approx(1 / 3)
    for key in ("test_accuracy", "test_accuracy_never", "test_accuracy_always"):  # each beside its interval
        low, high = chosen["ci"][key]
        assert 0.0 <= low <= chosen[key] <= high <= 1.0
    assert chosen["ci"]["test_accuracy_always"][0] == 0.0 and chosen["n_test"] == 3  # a resample of the 2 wrong ones
    assert chosen == tau_on_dev(dev_sweep, [0.1, 0.4, 0.8], [0, 1, 1], [1, 0, 0], bootstrap=50, seed=3)  # seeded
    assert "ci" not in tau_on_dev(dev_sweep, [0.1], [0], [1])
    assert tau_on_dev(threshold_sweep([0.2, 0.9], [0, 1], [1, 1]), [0.5], [1], [0])["tau"] == 0.3  # the first gain
