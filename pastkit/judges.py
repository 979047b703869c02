"""Answer judges: the reward for GRPO and the metric for closed-book evaluation. Pluggable by name.

`token_f1` (default, deterministic): SQuAD's token F1 between the gold answer and the first non-empty
line of the prediction, after SQuAD normalisation (lower case, no punctuation or articles) and after
dropping words copied from the question that are not in the gold answer. Credit is the F1 itself, in
[0, 1]. Restating the question neither helps nor hurts; every extra candidate or filler word lowers
precision, so an answer listing many candidates always scores below the right short answer.

`llm`: the paper's binary judge prompt (Appendix D.4.3) sent to any OpenAI-compatible chat endpoint
(a local `vllm serve` works). URL, model and key come from the environment only: PASTKIT_JUDGE_URL
(e.g. http://localhost:8000/v1), PASTKIT_JUDGE_MODEL, PASTKIT_JUDGE_API_KEY (or OPENAI_API_KEY).
Requests are retried with backoff; every judgement is appended to an on-disk cache as soon as it is
made, so a crash or an outage loses nothing already judged. The key is never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from .report import runs_dir

# Appendix D.4.3, verbatim.
JUDGE_PROMPT = (
    "You are a grading assistant. Your job is to determine whether a student's answer correctly answers the "
    "question based solely on the provided gold answer. Do not use any outside knowledge. The student answer "
    "can include additional information, but it must at least fully convey the gold answer and must not "
    "contradict it. Ignore style, phrasing, or extra details that do not affect correctness. Respond ONLY "
    "with 'yes' or 'no'.\nQuestion: {question}\nGold answer: {gold}\nStudent answer: {pred}\n"
    "Is the student answer correct based solely on the gold answer? Respond 'yes' or 'no'.")


class JudgeError(RuntimeError):
    """The judge could not give a verdict (unreachable endpoint, bad credentials, bad reply)."""


def normalize_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation, as tokens."""
    text = text.lower()
    text = "".join(ch if ch not in string.punctuation else " " for ch in text)
    return [t for t in text.split() if t not in ("a", "an", "the")]


def answer_line(pred: str) -> str:
    return next((line for line in pred.strip().splitlines() if line.strip()), "")


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
    """Binary LLM judge (D.4.3 prompt) over an OpenAI-compatible endpoint, cached on disk."""

    name = "llm"

    def __init__(self, url: str | None = None, model: str | None = None, retries: int = 5, timeout: float = 60,
                 cache: Path | None = None):
        self.url = (url or os.environ.get("PASTKIT_JUDGE_URL", "")).rstrip("/")
        self.model = model or os.environ.get("PASTKIT_JUDGE_MODEL", "")
        if not self.url or not self.model:
            raise JudgeError("the llm judge needs PASTKIT_JUDGE_URL (e.g. http://localhost:8000/v1) and "
                             "PASTKIT_JUDGE_MODEL in the environment")
        self.retries, self.timeout = retries, timeout
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model)
        self.cache_path = Path(cache or runs_dir() / "judge-cache" / f"{safe}.jsonl")
        self.cache: dict[str, float] = {}
        if self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.cache[rec["key"]] = rec["score"]

    def _key(self) -> str | None:
        return os.environ.get("PASTKIT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")

    def score(self, question: str, gold: str, pred: str) -> float:
        prompt = JUDGE_PROMPT.format(question=question, gold=gold, pred=pred)
        key = hashlib.sha256(f"{self.model}\n{prompt}".encode()).hexdigest()
        if key in self.cache:
            return self.cache[key]
        reply = self._ask(prompt)
        word = (re.findall(r"[a-z]+", reply.lower()) or [""])[0]
        if word not in ("yes", "no"):
            raise JudgeError(f"judge {self.model} replied {reply[:80]!r}, not yes/no")
        score = 1.0 if word == "yes" else 0.0
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_path, "a") as f:
            f.write(json.dumps({"key": key, "score": score, "reply": reply[:20]}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.cache[key] = score
        return score

    def _ask(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": 4}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key():
            headers["Authorization"] = f"Bearer {self._key()}"
        last = None
        for attempt in range(self.retries):
            try:
                req = urllib.request.Request(f"{self.url}/chat/completions", body, headers)
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                if e.code not in (408, 429) and e.code < 500:
                    raise JudgeError(f"judge endpoint {self.url} refused the request: HTTP {e.code}") from None
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except (KeyError, IndexError, json.JSONDecodeError) as e:
                raise JudgeError(f"judge endpoint {self.url} sent an unexpected reply ({e!r})") from None
            time.sleep(min(2 ** attempt, 30))
        raise JudgeError(f"judge endpoint {self.url} unreachable after {self.retries} tries ({last}); "
                         f"judgements so far are cached in {self.cache_path}")

    def describe(self) -> dict:
        return {"judge": self.name, "model": self.model, "url": self.url, "prompt": "paper Appendix D.4.3"}


def make_judge(name: str):
    if name == "token_f1":
        return TokenF1Judge()
    if name == "llm":
        return LLMJudge()
    raise ValueError(f"unknown judge {name!r}: 'token_f1' or 'llm'")
