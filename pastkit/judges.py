"""Answer judges: the reward for GRPO and the metric for closed-book evaluation. Pluggable by name.

`token_f1` (default, deterministic): SQuAD's token F1 between the gold answer and the first non-empty
line of the prediction, after SQuAD normalisation (lower case, no punctuation or articles) and after
dropping words copied from the question that are not in the gold answer. Credit is the F1 itself, in
[0, 1]. Restating the question neither helps nor hurts; every extra candidate or filler word lowers
precision, so an answer listing many candidates always scores below the right short answer.

`llm`: the paper's binary judge prompt (Appendix D.4.3) sent to any OpenAI-compatible chat endpoint
(a local `vllm serve` works). URL, model and key come from the environment only: PASTKIT_JUDGE_URL
(e.g. http://localhost:8000/v1), PASTKIT_JUDGE_MODEL, PASTKIT_JUDGE_API_KEY (or OPENAI_API_KEY).
Requests are retried with backoff within a total deadline per verdict ($PASTKIT_JUDGE_TIMEOUT seconds);
redirects are refused, so the key goes to the configured host only. Every judgement is appended to an
on-disk cache as soon as it is made, so a crash or an outage loses nothing already judged; a damaged
cache line is skipped and reported. The key is never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import string
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .places import runs_dir


@dataclass(frozen=True)
class JudgePrompt:
    """A binary judge prompt ({question}, {gold}, {pred}) and the two words that are its verdicts."""

    text: str
    yes: str
    no: str
    source: str  # where it comes from (paper section)


# Appendix D.4.3, verbatim: the SQuAD judge.
JUDGE_PROMPT = JudgePrompt(
    "You are a grading assistant. Your job is to determine whether a student's answer correctly answers the "
    "question based solely on the provided gold answer. Do not use any outside knowledge. The student answer "
    "can include additional information, but it must at least fully convey the gold answer and must not "
    "contradict it. Ignore style, phrasing, or extra details that do not affect correctness. Respond ONLY "
    "with 'yes' or 'no'.\nQuestion: {question}\nGold answer: {gold}\nStudent answer: {pred}\n"
    "Is the student answer correct based solely on the gold answer? Respond 'yes' or 'no'.",
    "yes", "no", "paper Appendix D.4.3")


class JudgeError(RuntimeError):
    """The judge could not give a verdict (unreachable endpoint, bad credentials, bad reply)."""


class NotACompletion(Exception):
    """An endpoint's reply that is not an OpenAI chat completion (an HTML error page from a proxy, ...)."""


def normalize_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation, as tokens."""
    text = text.lower()
    text = "".join(ch if ch not in string.punctuation else " " for ch in text)
    return [t for t in text.split() if t not in ("a", "an", "the")]


def answer_line(pred: str) -> str:
    return next((line for line in pred.strip().splitlines() if line.strip()), "")


def exact_match(gold: str, pred: str) -> float:
    """SQuAD exact match on the first answer line, after SQuAD normalisation: 1.0 or 0.0."""
    return float(bool(normalize_tokens(gold)) and normalize_tokens(gold) == normalize_tokens(answer_line(pred)))


def contains_gold(gold: str, pred: str) -> float:
    """Strict metric: does the first answer line contain the whole normalised gold answer (as a token run)?

    Unlike token F1, incidental word overlap earns nothing; unlike exact match, a correct answer inside a
    sentence still counts. A model that knows nothing scores about 0 on facts it could not guess."""
    g, p = normalize_tokens(gold), normalize_tokens(answer_line(pred))
    return float(bool(g) and any(p[i:i + len(g)] == g for i in range(len(p) - len(g) + 1)))


STRICT_METRICS = {"contains": contains_gold, "exact": exact_match}


def read_cache(path: Path, value, log) -> dict:
    """{key: value(record)} from an append-only JSONL cache; a damaged line (a crash or a full disk mid-write) is
    skipped and reported, so its entry is asked again."""
    out = {}
    if not path.exists():
        return out
    for i, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[rec["key"]] = value(rec)
        except (ValueError, KeyError, TypeError):
            log(f"{path}: line {i} is damaged and was skipped (its entry will be asked again)")
    return out


def append_to_cache(path: Path, record: dict) -> None:
    """Append one record to a JSONL cache, synced to disk before returning; never glued to a damaged last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
            f.write(b"\n")
        f.write((json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


class TokenF1Judge:
    """Deterministic question-aware token F1 (see module docstring)."""

    name = "token_f1"

    def score(self, question: str, gold: str, pred: str) -> float:
        gold_t = normalize_tokens(gold)
        keep = set(gold_t)
        asked = set(normalize_tokens(question)) - keep
        pred_t = [t for t in normalize_tokens(answer_line(pred)) if t not in asked]
        overlap = sum((Counter(gold_t) & Counter(pred_t)).values())
        if not gold_t or not pred_t or overlap == 0:
            return 0.0
        p, r = overlap / len(pred_t), overlap / len(gold_t)
        return 2 * p * r / (p + r)

    def describe(self) -> dict:
        return {"judge": self.name, "metric": "question-aware token F1 on the first answer line"}


class LLMJudge:
    """Binary LLM judge over an OpenAI-compatible endpoint, cached on disk; the prompt is the benchmark's
    (SQuAD: D.4.3, yes/no; LooGLE: E.5, True/False).

    HTTP goes through the `openai` client with redirects turned off: the key is sent to the configured
    host only, and a redirect (to any host) is an error, never followed. Each verdict has a total deadline
    (`timeout` seconds, default $PASTKIT_JUDGE_TIMEOUT or 120) covering every retry and backoff, so a slow
    or trickling endpoint cannot hold a run for longer than that per question.
    """

    name = "llm"

    def __init__(self, url: str | None = None, model: str | None = None, retries: int = 5,
                 timeout: float | None = None, cache: Path | None = None, log=None,
                 prompt: JudgePrompt = JUDGE_PROMPT):
        self.prompt = prompt
        self.url = (url or os.environ.get("PASTKIT_JUDGE_URL", "")).rstrip("/")
        self.model = model or os.environ.get("PASTKIT_JUDGE_MODEL", "")
        if not self.url or not self.model:
            raise JudgeError("the llm judge needs PASTKIT_JUDGE_URL (e.g. http://localhost:8000/v1) and "
                             "PASTKIT_JUDGE_MODEL in the environment")
        self.retries = retries
        raw = timeout if timeout is not None else os.environ.get("PASTKIT_JUDGE_TIMEOUT", 120)
        try:
            self.timeout = float(raw)
        except (TypeError, ValueError):
            self.timeout = float("nan")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            what = "PASTKIT_JUDGE_TIMEOUT" if timeout is None else "the judge timeout"
            raise JudgeError(f"{what}={raw!r}: must be a positive number of seconds (the deadline of one verdict)")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model)
        self.cache_path = Path(cache or runs_dir() / "judge-cache" / f"{safe}.jsonl")
        self.cache: dict[str, float] = {}
        self._read_cache(log or (lambda msg: warnings.warn(msg, stacklevel=3)))

    def _read_cache(self, log) -> None:
        self.cache.update(read_cache(self.cache_path, lambda rec: float(rec["score"]), log))

    def _key(self) -> str | None:
        return os.environ.get("PASTKIT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")

    def cache_key(self, *parts: str) -> str:
        """A cached reply's key: the endpoint and the model that gave it, and what was asked. Another endpoint
        serving a model of the same name is another judge and is asked afresh."""
        return hashlib.sha256("\n".join([self.url, self.model, *parts]).encode()).hexdigest()

    def score(self, question: str, gold: str, pred: str) -> float:
        prompt = self.prompt.text.format(question=question, gold=gold, pred=pred)
        key = self.cache_key(prompt)
        if key in self.cache:
            return self.cache[key]
        reply = self.ask(prompt)
        word = (re.findall(r"[a-z]+", reply.lower()) or [""])[0]
        yes, no = self.prompt.yes.lower(), self.prompt.no.lower()
        if word not in (yes, no):
            raise JudgeError(f"judge {self.model} replied {reply[:80]!r}, not {self.prompt.yes}/{self.prompt.no}")
        score = 1.0 if word == yes else 0.0
        append_to_cache(self.cache_path, {"key": key, "score": score, "reply": reply[:20]})
        self.cache[key] = score
        return score

    def ask(self, prompt: str, max_tokens: int = 4, system: str = "") -> str:
        """One reply's text (a verdict, or free text for other uses of the endpoint: ToolBench's simulator):
        retries with backoff, all within the total deadline. Not cached here; `score` caches verdicts."""
        import openai

        deadline = time.monotonic() + self.timeout
        last, tries, answered = None, 0, False
        for attempt in range(self.retries):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tries += 1
            try:
                return self._request(prompt, remaining, max_tokens, system)
            except openai.APIStatusError as e:
                code = e.status_code
                if 300 <= code < 400:
                    raise JudgeError(f"judge endpoint {self.url} answered with a redirect (HTTP {code} to "
                                     f"{e.response.headers.get('location')!r}); redirects are refused so the key "
                                     "only ever goes to the configured host: set PASTKIT_JUDGE_URL to the final "
                                     "address") from None
                if code not in (408, 409, 429) and code < 500:
                    raise JudgeError(f"judge endpoint {self.url} refused the request: HTTP {code}") from None
                last = f"HTTP {code}"
            except (openai.APIConnectionError, TimeoutError) as e:
                last, answered = str(e) or type(e).__name__, False
            except NotACompletion as e:  # a proxy's error page, say: retried like an outage
                last, answered = str(e), True
            time.sleep(max(0.0, min(2 ** attempt, 30, deadline - time.monotonic())))
        what = "gave no usable reply" if answered else "unreachable"
        raise JudgeError(f"judge endpoint {self.url} {what} after {tries} tries within the "
                         f"{self.timeout:g} s deadline ({last}); judgements so far are cached in {self.cache_path}")

    def _request(self, prompt: str, seconds: float, max_tokens: int, system: str) -> str:
        """One HTTP request, abandoned after `seconds` even if the server keeps trickling bytes."""
        import httpx2
        import openai

        result: dict = {}

        def call():
            try:
                with httpx2.Client(follow_redirects=False, timeout=seconds) as http:
                    client = openai.OpenAI(base_url=self.url, api_key=self._key() or "none", max_retries=0,
                                           http_client=http, timeout=seconds)
                    result["reply"] = client.chat.completions.create(
                        model=self.model, temperature=0, max_tokens=max_tokens,
                        messages=[*([{"role": "system", "content": system}] if system else []),
                                  {"role": "user", "content": prompt}])
            except BaseException as e:  # handed to the caller's thread
                result["error"] = e

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(seconds)
        if worker.is_alive():
            raise TimeoutError(f"no complete reply within {seconds:.1f} s")
        if isinstance(result.get("error"), ValueError):  # a JSON content type over a body that is not JSON
            raise NotACompletion("it answered HTTP 200 with a body that is not JSON (an HTML page?)") from None
        if "error" in result:
            raise result["error"]
        if isinstance(result["reply"], str):  # the client hands back a non-JSON body as text
            raise NotACompletion(f"it answered HTTP 200 with {result['reply'][:60]!r}, not a chat completion")
        try:
            content = result["reply"].choices[0].message.content
        except (AttributeError, IndexError, TypeError) as e:
            raise JudgeError(f"judge endpoint {self.url} sent an unexpected reply ({e!r})") from None
        if not isinstance(content, str):
            raise JudgeError(f"judge endpoint {self.url} sent a reply without text content ({content!r})")
        return content

    def describe(self) -> dict:
        return {"judge": self.name, "model": self.model, "url": self.url, "prompt": self.prompt.source}


def make_judge(name: str, prompt: JudgePrompt = JUDGE_PROMPT):
    """The judge named in the params; `prompt` is the benchmark's, used by the llm judge."""
    if name == "token_f1":
        return TokenF1Judge()
    if name == "llm":
        return LLMJudge(prompt=prompt)
    raise ValueError(f"unknown judge {name!r}: 'token_f1' or 'llm'")
