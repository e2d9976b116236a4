"""The LLM judge against a real OpenAI-compatible HTTP server on 127.0.0.1 that injects faults on cue.

The fake server reads the judge prompt: the ``Question:`` line selects a per-question fault script
(a list of actions, consumed one per request), and the rating is 1 exactly when the model's answer
contains ``GOOD``, so verdicts can be matched to items.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from step4_evaluation.llm_judge import (JUDGE_PROMPT_VERSION, QA_TEMPLATE, TRUTHFULQA_TEMPLATE, LLMJudge,
                                        build_messages, cache_key, parse_rating)

KEY_ENV = "OPENAI_API_KEY_TEST"
SECRET = "sk-secret-123"
TIMEOUT = 0.5
MAX_RETRIES = 2


class FakeServer:
    """Scripted OpenAI-compatible chat-completions server. Actions per request:
    ("ok",), ("status", code, headers), ("delay", seconds), ("badjson"[, content type]), ("content", text)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.scripts: dict[str, list[tuple]] = {}
        self.always: dict[str, tuple] = {}
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.handler_sleep = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def count(self, question: str | None = None) -> int:
        with self.lock:
            return sum(question is None or r["question"] == question for r in self.requests)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        question = re.search(r"^Question: (.*)$", prompt, re.M).group(1)
        answer = re.search(r"^Model's answer: (.*)$", prompt, re.M).group(1)
        with self.lock:
            self.requests.append({"question": question, "path": handler.path, "body": body,
                                  "authorization": handler.headers.get("Authorization"), "time": time.monotonic()})
            script = self.scripts.get(question)
            action = script.pop(0) if script else self.always.get(question, ("ok",))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.handler_sleep)
        with self.lock:
            # counted out before the reply is written: once the client has read it, its next request may
            # arrive before this thread would otherwise get to decrement (a false overlap)
            self.in_flight -= 1
        try:
            self.respond(handler, action, "1" if "GOOD" in answer else "0", body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)

    @staticmethod
    def respond(handler, action, rating, body):
        kind, content_type = action[0], "application/json"
        if kind == "delay":
            time.sleep(action[1])
        if kind == "status":
            payload = json.dumps({"error": {"message": f"injected {action[1]}", "type": "server_error"}}).encode()
            handler.send_response(action[1])
            for name, value in (action[2] if len(action) > 2 else {}).items():
                handler.send_header(name, value)
        elif kind == "badjson":
            payload = b"<html>this is not json"
            handler.send_response(200)
            content_type = action[1] if len(action) > 1 else content_type
        else:
            content = action[1] if kind == "content" else rating
            payload = json.dumps({
                "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}).encode()
            handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def server(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def make_judge(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    judges = []

    def make(**overrides):
        kwargs = dict(base_url=server.base_url, model="judge-model", api_key_env=KEY_ENV,
                      cache_path=tmp_path / "cache.jsonl", max_concurrency=4, max_retries=MAX_RETRIES,
                      timeout=TIMEOUT, backoff=0.01)
        kwargs.update(overrides)
        judge = LLMJudge(**kwargs)
        judges.append(judge)
        return judge

    yield make
    for judge in judges:
        judge.close()


def item(question, prediction, task="truthfulqa"):
    return {"question": question, "prediction": prediction, "correct_answers": ["yes"],
            "incorrect_answers": ["no"] if task == "truthfulqa" else None, "task": task}


# --- parsing and prompts -------------------------------------------------------------------------

@pytest.mark.parametrize("reply,expected", [
    ("1", 1), ("0", 0), ("1.", 1), ("Rating: 1", 1), ("rating:0\n", 0), ("**0**", 0), (" 1\nbecause", 1),
    ("maybe", None), ("", None), (None, None), ("0.5", None), ("10", None), ("-1", None), ("2", None),
])
def test_parse_rating(reply, expected):
    assert parse_rating(reply) == expected


def test_prompts_are_pinned_and_contain_the_evidence():
    assert JUDGE_PROMPT_VERSION
    tqa = build_messages("Q?", "pred", ["true one", "true two"], ["false one"], task="truthfulqa")
    text = tqa[-1]["content"]
    assert "Question: Q?" in text and "Model's answer: pred" in text
    assert "- true one\n- true two" in text and "- false one" in text and text.endswith("0 if it is false.")
    qa = build_messages("Q?", "pred", ["Paris"], ["Lyon"], task="qa")[-1]["content"]
    assert "- Paris" in qa and "Lyon" not in qa and "equivalent" in qa
    assert qa == QA_TEMPLATE.format(question="Q?", prediction="pred", correct_answers="- Paris")
    assert text == TRUTHFULQA_TEMPLATE.format(question="Q?", prediction="pred",
                                              correct_answers="- true one\n- true two",
                                              incorrect_answers="- false one")
    assert "(none given)" in build_messages("Q?", "p", ["a"], None)[-1]["content"]
    with pytest.raises(ValueError, match="task"):
        build_messages("Q?", "p", ["a"], task="nq")
    assert cache_key("m", tqa) != cache_key("other", tqa)


# --- the HTTP judge ------------------------------------------------------------------------------

def test_ok_request_shape_and_auth(server, make_judge):
    judge = make_judge()
    verdict = judge.judge("q-plain", "GOOD answer", ["yes"], ["no"])
    assert (verdict.correct, verdict.score, verdict.status, verdict.judge) == (True, 1.0, "ok", "llm:judge-model")
    bad = judge.judge("q-plain2", "bad answer", ["yes"], ["no"], task="qa")
    assert (bad.correct, bad.score, bad.status) == (False, 0.0, "ok")
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["authorization"] == f"Bearer {SECRET}"
    assert request["body"]["temperature"] == 0 and request["body"]["max_tokens"] <= 8
    assert request["body"]["model"] == "judge-model"


@pytest.mark.parametrize("fault", [
    ("status", 500), ("status", 503), ("badjson",), ("badjson", "text/html"), ("content", "I think it is true"),
    ("delay", 3 * TIMEOUT),
], ids=["http500", "http503", "not-json", "html", "no-digit", "timeout"])
def test_transient_fault_is_retried(server, make_judge, fault):
    server.scripts["q-fault"] = [fault]
    verdict = make_judge().judge("q-fault", "GOOD", ["yes"], ["no"])
    assert verdict.status == "ok" and verdict.correct is True
    assert server.count("q-fault") == 2


def test_429_honours_retry_after(server, make_judge):
    server.scripts["q-429"] = [("status", 429, {"Retry-After": "0.4"})]
    judge = make_judge()
    verdict = judge.judge("q-429", "GOOD", ["yes"], ["no"])
    assert verdict.status == "ok" and verdict.correct is True
    first, second = [r["time"] for r in server.requests if r["question"] == "q-429"]
    assert second - first >= 0.38  # the backoff alone would wait ~0.01 s
    assert judge.stats["retries"] == 1


def test_persistent_malformed_reply_fails_after_max_retries(server, make_judge, tmp_path):
    server.always["q-maybe"] = ("content", "maybe")
    judge = make_judge()
    verdict = judge.judge("q-maybe", "GOOD", ["yes"], ["no"])
    assert verdict.status == "failed" and verdict.correct is None and verdict.score is None
    assert "maybe" in verdict.reason and "failed after 3" in verdict.reason
    assert server.count("q-maybe") == 1 + MAX_RETRIES
    assert not (tmp_path / "cache.jsonl").exists() or "q-maybe" not in (tmp_path / "cache.jsonl").read_text()


def test_client_error_is_not_retried(server, make_judge):
    server.scripts["q-400"] = [("status", 400)]
    verdict = make_judge().judge("q-400", "GOOD", ["yes"], ["no"])
    assert verdict.status == "failed" and "HTTP 400" in verdict.reason
    assert server.count("q-400") == 1


def test_judge_many_order_cache_and_resume(server, make_judge, tmp_path):
    items = [item(f"q{i}", "GOOD answer" if i % 3 == 0 else "bad answer", task="qa" if i % 2 else "truthfulqa")
             for i in range(12)]
    items.append(item("q-broken", "GOOD"))
    items.append(dict(items[0]))  # a duplicate prompt is sent once
    server.always["q-broken"] = ("status", 500)
    server.scripts["q4"] = [("status", 502)]

    verdicts = make_judge().judge_many(items)
    assert len(verdicts) == len(items)
    for i, verdict in enumerate(verdicts[:12]):
        assert verdict.status == "ok" and verdict.correct is (i % 3 == 0), i
    assert verdicts[12].status == "failed" and verdicts[12].correct is None
    assert verdicts[13] == verdicts[0]
    assert [v.status for v in verdicts].count("failed") == 1
    assert server.count("q-broken") == 1 + MAX_RETRIES and server.count("q0") == 1 and server.count("q4") == 2

    lines = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {r["rating"] for r in lines} == {0, 1}
    assert all(r["prompt_version"] == JUDGE_PROMPT_VERSION and r["model"] == "judge-model" for r in lines)

    # a fresh judge over the same cache: zero requests for the cached items, the failed one is retried
    before = server.count()
    del server.always["q-broken"]
    rerun = make_judge().judge_many(items)
    assert server.count() - before == 1 and server.count("q-broken") == 2 + MAX_RETRIES
    assert [v.correct for v in rerun[:12]] == [v.correct for v in verdicts[:12]]
    assert all("(cached)" in v.reason for v in rerun[:12])
    assert rerun[12].status == "ok" and rerun[12].correct is True and "failed" not in [v.status for v in rerun]

    before = server.count()
    assert [v.correct for v in make_judge().judge_many(items)] == [v.correct for v in rerun]
    assert server.count() == before


def test_concurrency_is_bounded(server, make_judge):
    server.handler_sleep = 0.1
    judge = make_judge(max_concurrency=3)
    verdicts = judge.judge_many([item(f"c{i}", "GOOD") for i in range(15)])
    assert "failed" not in [v.status for v in verdicts]
    assert server.max_in_flight == 3  # concurrency happened, and never exceeded the bound


def test_key_is_sent_but_never_logged_or_cached(server, make_judge, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpcore2", "step4_evaluation"):
        caplog.set_level(logging.DEBUG, logger=name)
    server.scripts["k1"] = [("status", 500), ("status", 429, {"Retry-After": "0"})]
    server.always["k2"] = ("content", "no idea")
    judge = make_judge()
    verdicts = judge.judge_many([item("k1", "GOOD"), item("k2", "GOOD")])
    assert [v.status for v in verdicts] == ["ok", "failed"]
    assert all(r["authorization"] == f"Bearer {SECRET}" for r in server.requests)
    captured = capsys.readouterr()
    assert caplog.records  # logging did happen at DEBUG
    assert SECRET not in caplog.text and SECRET not in captured.out + captured.err
    assert SECRET not in (tmp_path / "cache.jsonl").read_text()
    assert SECRET not in repr(judge) and all(SECRET not in v.reason for v in verdicts)


def test_missing_key_variable_raises(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY_MISSING_X", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY_MISSING_X"):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env="OPENAI_API_KEY_MISSING_X", cache_path=tmp_path / "c.jsonl")


def test_cache_survives_a_cut_short_line(server, make_judge, tmp_path):
    make_judge().judge("q-a", "GOOD", ["yes"], ["no"])
    path = tmp_path / "cache.jsonl"
    with open(path, "a") as handle:
        handle.write('{"key": "abc", "rat')  # a crash mid-write
    judge = make_judge()
    assert judge.judge("q-a", "GOOD", ["yes"], ["no"]).reason.endswith("(cached)")
    judge.judge("q-b", "bad", ["yes"], ["no"])
    assert server.count() == 2
    assert make_judge().judge("q-b", "bad", ["yes"], ["no"]).correct is False and server.count() == 2


def unreachable_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago): every request is refused."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_an_unreachable_endpoint_is_named_once_then_counted(make_judge, caplog):
    url = unreachable_url()
    caplog.set_level(logging.WARNING, logger="step4_evaluation.llm_judge")
    verdicts = make_judge(base_url=url).judge_many([item(f"down{i}", "GOOD") for i in range(5)])
    assert [v.status for v in verdicts] == ["failed"] * 5
    assert [r.getMessage() for r in caplog.records] == [
        f"LLM judge: cannot connect to {url} (ConnectError); further failures to reach it are counted, not logged "
        "one by one",
        f"LLM judge at {url}: 5 of 5 judgment(s) failed; {5 * (1 + MAX_RETRIES)} request(s) could not reach it"]
    assert all(v.reason == f"failed after {1 + MAX_RETRIES} request(s): cannot connect to {url} (ConnectError)"
               for v in verdicts)
