"""Judges: the deterministic default cannot be gamed by long answers; the LLM judge retries, caches, fails clearly."""

import http.server
import json
import threading

import pytest

from pastkit.judges import JudgeError, LLMJudge, TokenF1Judge

Q = "What Age's ideas allowed Estonian writings to gain significance?"
GOLD = "Age of Enlightenment"


def test_right_short_answer_scores_full_and_restating_the_question_costs_nothing():
    j = TokenF1Judge()
    assert j.score(Q, GOLD, "The Age of Enlightenment.") == 1.0
    assert j.score(Q, GOLD, "The Age of Enlightenment allowed Estonian writings to gain significance.") == 1.0
    assert j.score(Q, GOLD, "The Renaissance.") == 0.0
    assert j.score(Q, GOLD, "") == 0.0


@pytest.mark.parametrize("candidates", [
    ["Renaissance", "Age of Enlightenment", "Industrial Revolution"],
    ["Age of Enlightenment", "Romanticism", "Reformation", "Baroque", "Modernism"],
    ["Middle Ages", "Age of Reason", "Age of Enlightenment", "Age of Discovery", "Bronze Age", "Space Age"],
])
def test_listing_many_candidates_scores_below_the_right_short_answer(candidates):
    j = TokenF1Judge()
    listing = ", ".join(candidates)
    assert j.score(Q, GOLD, listing) < j.score(Q, GOLD, GOLD)
    # every further candidate lowers (never raises) the credit: hedging cannot pay
    i = candidates.index(GOLD)
    scores = [j.score(Q, GOLD, ", ".join(candidates[:i + 1 + extra])) for extra in range(len(candidates) - i)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < scores[0] or len(scores) == 1


def test_only_the_first_answer_line_counts():
    j = TokenF1Judge()
    assert j.score(Q, GOLD, "Renaissance\nActually, Age of Enlightenment") == 0.0


class _Endpoint(http.server.BaseHTTPRequestHandler):
    """A local OpenAI-compatible endpoint: fails `fail_first` times with 503, then answers `reply`."""

    fail_first, reply, calls = 0, "yes", []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((body, self.headers.get("Authorization")))
        if len(type(self).calls) <= type(self).fail_first:
            self.send_response(503)
            self.end_headers()
            return
        out = json.dumps({"choices": [{"message": {"content": type(self).reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    _Endpoint.calls = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_llm_judge_retries_then_caches(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_JUDGE_API_KEY", "sk-test-secret")
    _Endpoint.fail_first, _Endpoint.reply = 2, "Yes."
    j = LLMJudge(url=endpoint, model="judge-model", cache=tmp_path / "cache.jsonl", retries=4)
    monkeypatch.setattr("pastkit.judges.time.sleep", lambda s: None)
    assert j.score(Q, GOLD, "Enlightenment") == 1.0
    assert len(_Endpoint.calls) == 3
    body, auth = _Endpoint.calls[-1]
    assert auth == "Bearer sk-test-secret" and body["model"] == "judge-model" and body["temperature"] == 0
    assert "Gold answer: Age of Enlightenment" in body["messages"][0]["content"]
    # a new judge (a crashed run resumed) reads the cache: no new request
    again = LLMJudge(url=endpoint, model="judge-model", cache=tmp_path / "cache.jsonl")
    assert again.score(Q, GOLD, "Enlightenment") == 1.0 and len(_Endpoint.calls) == 3
    assert "sk-test-secret" not in (tmp_path / "cache.jsonl").read_text()
    assert "sk-test-secret" not in json.dumps(j.describe())


def test_llm_judge_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("pastkit.judges.time.sleep", lambda s: None)
    j = LLMJudge(url="http://127.0.0.1:9/v1", model="m", cache=tmp_path / "c.jsonl", retries=2, timeout=2)
    with pytest.raises(JudgeError, match="unreachable after 2 tries"):
        j.score(Q, GOLD, "x")


def test_llm_judge_needs_its_environment(monkeypatch):
    monkeypatch.delenv("PASTKIT_JUDGE_URL", raising=False)
    with pytest.raises(JudgeError, match="PASTKIT_JUDGE_URL"):
        LLMJudge()


def test_llm_judge_refuses_a_non_yes_no_reply(endpoint, tmp_path):
    _Endpoint.fail_first, _Endpoint.reply = 0, "Maybe, partially."
    j = LLMJudge(url=endpoint, model="m", cache=tmp_path / "c.jsonl")
    with pytest.raises(JudgeError, match="not yes/no"):
        j.score(Q, GOLD, "x")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Another host's server: records any request that reaches it (none should)."""

    seen: list = []

    def do_POST(self):
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args):
        pass


def _serve(handler, host="127.0.0.1"):
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_llm_judge_refuses_redirects_and_never_sends_the_key_elsewhere(tmp_path, monkeypatch):
    other = _serve(_Recorder, host="127.0.0.2")
    _Recorder.seen = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.2:{other.server_port}/v1/chat/completions")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = _serve(Redirect)
    monkeypatch.setenv("PASTKIT_JUDGE_API_KEY", "sk-test-secret")
    j = LLMJudge(url=f"http://127.0.0.1:{server.server_port}/v1", model="m", cache=tmp_path / "c.jsonl")
    with pytest.raises(JudgeError, match="redirect"):
        j.score(Q, GOLD, "x")
    assert _Recorder.seen == []
    server.shutdown()
    other.shutdown()


def test_llm_judge_has_a_total_deadline_against_a_trickling_server(tmp_path, monkeypatch):
    import time

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(60):  # one byte every half second: each read is quick, the whole is not
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = _serve(Trickle)
    monkeypatch.setenv("PASTKIT_JUDGE_TIMEOUT", "2")
    j = LLMJudge(url=f"http://127.0.0.1:{server.server_port}/v1", model="m", cache=tmp_path / "c.jsonl")
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match="2 s deadline"):
        j.score(Q, GOLD, "x")
    assert time.monotonic() - t0 < 4
    server.shutdown()


def test_llm_judge_reply_without_content_is_a_clear_error(endpoint, tmp_path):
    _Endpoint.fail_first, _Endpoint.reply = 0, None
    j = LLMJudge(url=endpoint, model="m", cache=tmp_path / "c.jsonl")
    with pytest.raises(JudgeError, match="without text content"):
        j.score(Q, GOLD, "x")


def test_llm_judge_recovers_from_a_damaged_cache_line(endpoint, tmp_path):
    _Endpoint.fail_first, _Endpoint.reply = 0, "yes"
    cache = tmp_path / "c.jsonl"
    LLMJudge(url=endpoint, model="m", cache=cache).score(Q, GOLD, "first")
    with open(cache, "a") as f:
        f.write('{"key": "abc", "sco')  # the disk filled up mid-write
    seen = []
    j = LLMJudge(url=endpoint, model="m", cache=cache, log=seen.append)
    assert len(seen) == 1 and "line 2 is damaged" in seen[0]
    assert j.score(Q, GOLD, "first") == 1.0 and len(_Endpoint.calls) == 1  # the good line was kept
    j.score(Q, GOLD, "second")
    lines = cache.read_text().splitlines()
    assert json.loads(lines[-1])["score"] == 1.0  # the new verdict is on a line of its own
    assert len(LLMJudge(url=endpoint, model="m", cache=cache, log=seen.append).cache) == 2


def test_strict_metrics_give_no_credit_for_incidental_overlap():
    from pastkit.judges import contains_gold, exact_match
    gold = "Age of Enlightenment"
    assert contains_gold(gold, "It was the Age of Enlightenment.") == 1.0
    assert exact_match(gold, "the age of enlightenment") == 1.0
    assert exact_match(gold, "It was the Age of Enlightenment.") == 0.0
    # word overlap that token F1 rewards earns nothing on the strict metric
    assert TokenF1Judge().score(Q, gold, "the age of steam") > 0 and contains_gold(gold, "the age of steam") == 0.0
    assert contains_gold(gold, "Renaissance\nAge of Enlightenment") == 0.0  # only the first answer line counts
    assert contains_gold("", "anything") == 0.0 and exact_match("", "") == 0.0
