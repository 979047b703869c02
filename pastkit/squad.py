"""SQuAD closed-book knowledge incorporation, SEAL protocol (paper Sec. 5.1.1, Appendix D).

Passages are JSON: `[{"title", "context", "questions": [{"question", "answer"}]}]`. The shipped files
(pastkit/data/squad, see its README) are the paper's splits; any file of the same format works, so a
user can test PaST on documents of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data" / "squad"
SOURCE_ROUNDS = ["train_round1_50", "train_round2_50"]  # Appendix D.1: K=2 disjoint rounds of N=50 passages
EVAL_SET = "val_seal200"  # SEAL's n=200 evaluation subset

# Appendix D.4.1, verbatim: the implication prompt for self-generated SFT data.
IMPLICATIONS_PROMPT = ("Let's read the following passage and produce a list of implications derived directly "
                       "or indirectly from the content.\nPassage:\n{passage}\nImplications:\n")
# Appendix D.4.2, verbatim: the closed-book QA prompt for RL rollouts and evaluation.
QA_PROMPT = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:"


def load_passages(name_or_path: str | Path) -> list[dict]:
    """Passages from a shipped split name (e.g. "val_seal200") or a JSON file of the same format."""
    path = DATA / f"{name_or_path}.json" if (DATA / f"{name_or_path}.json").exists() else Path(name_or_path)
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in DATA.glob("*.json")))
        raise FileNotFoundError(f"no passages at {name_or_path!r} (shipped splits: {shipped}; or give a path)")
    try:
        passages = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(passages, list):
        raise ValueError(f"{path}: expected a JSON array of passages")
    for i, p in enumerate(passages):
        if not isinstance(p, dict) or not isinstance(p.get("context"), str) or not isinstance(
                p.get("questions"), list):
            raise ValueError(f"{path}: passage {i} needs 'context' (str) and 'questions' (list)")
        for q in p["questions"]:
            if not isinstance(q, dict) or not {"question", "answer"} <= set(q):
                raise ValueError(f"{path}: passage {i} has a question without 'question'/'answer': {q!r}")
            if not all(isinstance(q[k], str) and q[k].strip() for k in ("question", "answer")):
                raise ValueError(f"{path}: passage {i} has a question or answer that is not a non-empty string: {q!r}")
        p.setdefault("title", "")
    return passages


# ---------------------------------------------------------------------------------------------------
# Splits and SEAL-style training documents
# ---------------------------------------------------------------------------------------------------

def source_rounds(n_source: int, rounds: int) -> list[list[dict]]:
    """K disjoint source sets: slices of the 100 shipped source passages (n=50, K=2 is the paper's split)."""
    pool = load_passages(SOURCE_ROUNDS[0]) + load_passages(SOURCE_ROUNDS[1])
    if n_source * rounds > len(pool):
        raise ValueError(f"rounds × n_source = {rounds * n_source} exceeds the {len(pool)} shipped source passages")
    return [pool[k * n_source:(k + 1) * n_source] for k in range(rounds)]


def questions_of(passages: list[dict]) -> list[dict]:
    return [{"question": q["question"], "answer": q["answer"], "title": p["title"]}
            for p in passages for q in p["questions"]]


def passage_document(p: dict) -> str:
    return f"{p['title']}\n{p['context']}"


def cpt_documents(passages: list[dict], generations: list[list[str]] | None) -> list[str]:
    """Multi-passage regime: each passage, plus each whole implication generation as its own document."""
    docs = [passage_document(p) for p in passages]
    for p, gens in zip(passages, generations or []):
        docs += [f"{p['title']}\n{g.strip()}" for g in gens if g.strip()]
    return docs


def single_documents(p: dict, generations: list[str] | None) -> list[str]:
    """Single-passage regime (SEAL): title + each implication line as a sequence, plus the passage."""
    lines = [line.strip() for g in generations or [] for line in g.splitlines() if line.strip()]
    return [f"{p['title']}\n{line}" for line in lines] + [passage_document(p)]
