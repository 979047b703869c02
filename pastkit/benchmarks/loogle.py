"""LooGLE long-document closed-book QA (paper Sec. 5.1.2, Appendix E) on the PaST engine.

Documents are LooGLE's `shortdep_qa` JSONL: one long document per line, `{"input", "title", "qa_pairs"}`,
where `qa_pairs` is a Python-literal string of `[{"S": evidence, "Q": question, "A": answer}]` (parsed with
`ast.literal_eval`, never `eval`). The kit ships the first 5 documents (pastkit/data/loogle, see its README);
the full 105-document file is taken as a path, or from the Hugging Face hub where one is reachable.

What this file gives the engine:
- splits by index, one rule for any number of documents (`split`): the paper's on the full file;
- SFT in two phases (E.2, Table 13): phase 1 knowledge encoding on a mix of verbatim chunks, summarisation
  (chunk -> the model's own summary, Table 12 templates) and recall (summary -> chunk); phase 2 QA adaptation on
  question-answer pairs the model proposes from the text (Tables 10-11 prompts, <question>/<answer> tags;
  malformed generations are counted, dropped and reported);
- GRPO on those synthetic questions, closed-book, reward = the judge; the RL checkpoint is chosen on the
  validation documents (E.4, `Engine.select`);
- scoring: the real LooGLE questions, closed-book, `eval_samples` sampled answers per question at temperature
  1.0, averaged (E.5); the judge prompt is E.5's (True/False) when the LLM judge is used.
Table 2 and the reports beside it are assembled from engine results in `table2`.

At CPU scale a 20k-token document costs minutes per training epoch, so with `excerpt_words` > 0 each document is
reduced to the text around its questions' evidence sentences (the `S` field; questions whose evidence cannot
be found in the document are dropped and counted). This keeps every fact that is tested and removes most of
the haystack, so it is an easier task than the paper's; `excerpt_words = 0` (paper profile) trains on whole
documents. No question or answer of a test document is ever trained on.
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pandas as pd

from ..config import SCHEDULES, PastParams
from ..console import say
from ..evaluation import summarize
from ..generation import generate
from ..judges import STRICT_METRICS, JudgePrompt, make_judge
from ..knowledge import SFTSpec
from ..past import Domain, Engine, SFTPhase, Study, digest, rounds_table
from ..skill_rl import RLTask, closed_book_task
from .squad import split_sentences

DATA = Path(__file__).resolve().parent.parent / "data" / "loogle"
SHIPPED = "shortdep_qa"  # the 5-document sample
HUB = "hf:bigainlco/LooGLE"  # config shortdep_qa, split test

# Appendix E does not give the closed-book QA prompt; the kit uses the SQuAD one (D.4.2) for both benchmarks.
QA_PROMPT = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:"

# Table 10, verbatim: the instruction shared by the six proposer prompts; {task} and {example} are a variation's.
PROPOSER = (
    "You are an AI assistant tasked with generating a single, high-quality question-answer pair from a given text. "
    "**Your instructions are critical:** 1. **Generate one Q&A pair** based *only* on the provided text. "
    "2. **Specificity is Key:** The question *must* be self-contained and unambiguous. It must include specific "
    "names or key terms from the text (e.g., \"What is Project Helios'?\" instead of \"What is this project?\"). "
    "3. **Format:** Your output *must* use XML-style tags: <question>Your question here</question> "
    "<answer>Your answer here</answer>. Do not include any other text before or after the tags. 4. **Task:** {task} "
    "**Example of a Good, Specific Q&A:** {example} **Text Fragment:** {text_segment} **Your Output:**")
# Tables 10-11, verbatim: (name, task, example) of variations 1-6.
VARIATIONS = [
    ("factual detail", "Focus on a specific, factual detail: a name, a date, a key term, or a specific component.",
     "<question> What consensus mechanism does the Helios architecture pioneer? </question> <answer> It pioneers a "
     "decentralized consensus mechanism called Proof-of-History (PoH). </answer>"),
    ("reasoning", "Focus on the *reason* (Why) or the *method* (How) behind a concept or event described in the text.",
     "<question> Why does the Proof-of-History (PoH) mechanism successfully reduce latency? </question> <answer> "
     "Because it creates a verifiable, sequential record of time, which avoids the need for solving complex "
     "computational puzzles like in Proof-of-Work'. </answer>"),
    ("definition", "Generate a \"What is...\" or \"What does... stand for?\" question about a key concept.",
     "<question> What is Proof-of-History (PoH) as described in the context of the Helios architecture? </question> "
     "<answer> It is a decentralized consensus mechanism that creates a verifiable, sequential record of time. "
     "</answer>"),
    ("comparison", "Focus on the *difference* or *similarity* between two specific concepts, methods, or entities in "
     "the text.",
     "<question> What is the key difference between the Proof-of-History (PoH) mechanism and Proof-of-Work (PoW)? "
     "</question> <answer> Proof-of-History (PoH) creates a verifiable, sequential record of time, whereas "
     "Proof-of-Work (PoW) relies on solving complex computational puzzles. </answer>"),
    ("list", "Generate a question that asks to list steps, components, or stages of a specific system or method.",
     "<question> What are the three main stages of the Project Nova deployment pipeline? </question> <answer> The "
     "three main stages are Build', Test', and Verify'. </answer>"),
    ("significance", "Generate a \"What is the significance of...\" or \"What is the main advantage of...\" question.",
     "<question> What is the main advantage of the Helios architectures Proof-of-History mechanism? </question> "
     "<answer> Its main advantage is a drastic reduction in latency. </answer>"),
]
# Table 12, verbatim: summarisation templates ({text_segment}) and recall/expansion templates ({summary}).
SUMMARY_TEMPLATES = [
    "Create a concise and objective summary of the text below. Focus on the main ideas and most important "
    "information, presenting them clearly in your own words.\n\nText to summarize:\n{text_segment}\n\n"
    "Now generate your summary:",
    "Distill the following text to its absolute essence. Provide a one-paragraph summary that captures the core "
    "argument and key takeaways. Avoid any fluff or secondary details.\n\nOriginal Text:\n{text_segment}\n\n"
    "Your distilled summary:",
    "Break down the following text for someone completely unfamiliar with the topic. Your summary should be simple, "
    "clear, and use easy-to-understand language, as if you were explaining it to a 5th grader. Focus on the main "
    "concepts without getting lost in technical jargon.\n\nText:\n{text_segment}\n\nYour simple explanation:",
    "Provide a summary of the following passage. Your summary should not only capture the key information but also "
    "reflect the original authors tone and style (e.g., formal, persuasive, humorous, critical). \n\n"
    "Original Passage:\n{text_segment}\n\nYour summary, in the original tone:",
    "Provide a strictly neutral and objective summary of the provided text. Your goal is to recount the main points "
    "and arguments without injecting any personal opinion, interpretation, or evaluative language. Simply state "
    "what the text says.\n\nText:\n{text_segment}\n\nNeutral Summary:",
]
RECALL_TEMPLATES = [
    "Below is a summary of a larger text. Your task is to expand on this summary, creating a detailed and "
    "comprehensive paragraph that could have been the original source. Flesh out the main points with "
    "explanations, smooth transitions, and supporting details.\n\nSummary:\n{summary}\n\n"
    "Now generate the detailed original text:",
    "You are given a concise summary below. Your objective is to generate a more detailed and fully-formed text "
    "based on it. Elaborate on the ideas presented in the summary, ensuring the resulting text is coherent, "
    "well-structured, and reads naturally.\n\nSummary:\n{summary}\n\nGenerated Text:",
    "The following summary is a high-level overview of a piece of information. Your task is to reconstruct a "
    "plausible original text by filling in the necessary details, examples, and explanations that might have been "
    "removed during summarization.\n\nSummary:\n{summary}\n\nReconstructed Text with Details:",
    "Consider the summary below as a set of conclusions or key statements. Your goal is to write a text that "
    "logically leads to these points. Build a coherent argument or explanation that culminates in the information "
    "provided in the summary.\n\nKey Points / Summary:\n{summary}\n\nText with Logical Development:",
    "Take the core ideas presented in the summary below and weave them into a single, seamless paragraph. Focus on "
    "creating smooth transitions between the points so they flow together as a unified piece of writing, rather "
    "than a list of facts.\n\nCore Ideas:\n{summary}\n\nCoherent Paragraph:",
]
# Appendix E.5, verbatim: the evaluation judge (True/False).
JUDGE = JudgePrompt(
    "You are a precise evaluator. Your task is to determine if the 'Predicted Answer' is semantically the same as "
    "the 'Ground Truth' for the given 'Question'. Your entire response MUST be only the single word 'True' or the "
    "single word 'False'. Do not provide any explanation or punctuation.\nQuestion: {question}\n"
    "Ground Truth: {gold}\nPredicted Answer: {pred}", "True", "False", "paper Appendix E.5")
QA_SOURCES = ("proposed", "cloze", "recite", "keywords")
CITATION = re.compile(r"\[\d+\]")
QA_TAGS = re.compile(r"<question>(.*?)</question>\s*<answer>(.*?)</answer>", re.S)


# ---------------------------------------------------------------------------------------------------
# Documents and splits
# ---------------------------------------------------------------------------------------------------

def load_documents(source: str) -> list[dict]:
    """Documents as `{"index", "title", "text", "qa": [{"S", "Q", "A"}]}` from the shipped sample ("shortdep_qa"),
    a JSONL path of the same format, or "hf:bigainlco/LooGLE" (needs a reachable hub)."""
    if source == HUB:
        from datasets import load_dataset
        rows = load_dataset(HUB[3:], "shortdep_qa", split="test")
        return [_document(dict(r), i, HUB) for i, r in enumerate(rows)]
    path = DATA / f"{source}.jsonl" if source == SHIPPED else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no LooGLE documents at {source!r} (the shipped sample is {SHIPPED!r}; or give the "
                                f"path of a shortdep_qa JSONL file, or {HUB!r})")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    docs = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not JSON ({e})") from None
        docs.append(_document(row, len(docs), f"{path}: line {n}"))
    if not docs:
        raise ValueError(f"{path}: holds no documents")
    return docs


def _document(row, index: int, where: str) -> dict:
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("input", "title", "qa_pairs")):
        raise ValueError(f"{where}: needs string fields 'input', 'title' and 'qa_pairs'")
    try:
        qa = ast.literal_eval(row["qa_pairs"])
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"{where}: 'qa_pairs' is not a Python literal list ({type(e).__name__})") from None
    if not isinstance(qa, list) or not qa:
        raise ValueError(f"{where}: document {row['title']!r} has no questions")
    for q in qa:
        if not isinstance(q, dict) or not all(isinstance(q.get(k), str) and q[k].strip() for k in ("Q", "A")):
            raise ValueError(f"{where}: a question-answer pair without a non-empty 'Q' and 'A': {str(q)[:120]}")
    return {"index": index, "title": row["title"], "text": row["input"],
            "qa": [{"S": q.get("S", "") if isinstance(q.get("S"), str) else "", "Q": q["Q"], "A": q["A"]}
                   for q in qa]}


def split(n: int, source_docs: int, rounds: int, val_docs: int, test_docs: int) -> dict:
    """Document indices by role. From the end: source round 1, round 2, ..., then validation; test from the start.

    On the full 105-document file with the paper's sizes (5 per round, 2 rounds, 5 validation, 50 test) this is
    the paper's split (E.1): round 1 = 100-104, round 2 = 95-99, validation = 90-94, test = 0-49. On the shipped
    5-document sample with 1/2/1: round 1 = 4, round 2 = 3, validation = 2, test = 0-1. Test never overlaps the rest.
    """
    end, source = n, []
    for _ in range(rounds):
        source.append(list(range(end - source_docs, end)))
        end -= source_docs
    validation = list(range(end - val_docs, end))
    end -= val_docs
    if end < 1:
        raise ValueError(f"{n} documents cannot hold {rounds} source round(s) of {source_docs}, {val_docs} "
                         f"validation document(s) and at least one test document")
    return {"source": source, "validation": validation, "test": list(range(min(end, test_docs)))}


def _norm(text: str) -> str:
    return " ".join(text.split())


def _skeleton(words: list[str]) -> tuple[str, list[int]]:
    """Lower-case letters and digits only, citation marks like [6] dropped, with the word each character came
    from: evidence sentences differ from the document in quotes, spacing and citations, not in their words."""
    chars, where = [], []
    for i, w in enumerate(words):
        for ch in CITATION.sub("", w).lower():
            if ch.isalnum():
                chars.append(ch)
                where.append(i)
    return "".join(chars), where


def excerpts(doc: dict, words: int) -> tuple[list[str], list[dict], int]:
    """(training texts, the questions they cover, how many questions were dropped) for one document.

    words == 0: the whole document and every question. Otherwise the text around each question's evidence
    (a window of `words` words starting a quarter window before it; overlapping windows merged). The evidence is
    located by its first 60 letters and digits, or those of any of its sentences; a question whose evidence is
    not found in the document is dropped and counted.
    """
    if words == 0:
        return [doc["text"]], doc["qa"], 0
    tokens = doc["text"].split()
    skeleton, where = _skeleton(tokens)
    windows, kept = [], []
    for q in doc["qa"]:
        probes = [_skeleton(x.split())[0][:60] for x in [q["S"], *re.split(r"(?<=[.!?])\s+", q["S"])]]
        at = next((skeleton.find(x) for x in probes if len(x) >= 25 and x in skeleton), None)
        if at is None:
            continue
        i = max(0, where[at] - words // 4)
        windows.append([i, min(len(tokens), i + words)])
        kept.append(q)
    windows.sort()
    merged = []
    for w in windows:
        if merged and w[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], w[1])
        else:
            merged.append(w)
    return [" ".join(tokens[a:b]) for a, b in merged], kept, len(doc["qa"]) - len(kept)


def chunks(text: str, tok, size: int, overlap: int) -> list[str]:
    """Sliding windows of `size` tokens overlapping by `overlap` (E.2), decoded back to text."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    step = max(1, size - overlap)
    return [tok.decode(ids[i:i + size]) for i in range(0, max(1, len(ids) - overlap), step)]


def sentence_pairs(title: str, chunk: str, k: int, kind: str = "cloze") -> list[tuple[str, str]]:
    """Up to k question-answer pairs made from the text without a model, one per sentence of 8 words or more.
    For models that cannot follow the proposer prompt: SmolLM2-135M-Instruct gave 0 well-formed pairs of 12 at
    temperature 1.0 on a source document, and at temperature 0 it copies the prompt's example (README, LooGLE).
    The paper profile uses the proposer. `kind` (a `qa_source`):

    * "cloze": the sentence's first two thirds, asked for its last third (a fragment);
    * "recite": the same question, answered with the whole sentence;
    * "keywords": the sentence's four longest words, answered with the whole sentence.

    LooGLE's gold answers are mostly a sentence of the document or a clause of it; "recite" and "keywords" teach
    that shape, "keywords" with a cue that is not the sentence's opening, as a real question's is not."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", chunk) if len(s.split()) >= 8][:k]
    pairs = []
    for s in sentences:
        words = s.split()
        if kind == "keywords":
            bare = list(dict.fromkeys(w.strip(".,;:!?\"'()[]") for w in words))
            longest = set(sorted(bare, key=len, reverse=True)[:4])
            pairs.append((f'What does "{title}" say about {", ".join(w for w in bare if w in longest)}?', s))
            continue
        cut = len(words) * 2 // 3
        opening, ending = " ".join(words[:cut]), " ".join(words[cut:])
        pairs.append((f'In "{title}", how does this sentence end: "{opening} ..."?', s if kind == "recite" else ending))
    return pairs


def parse_qa(text: str) -> tuple[str, str] | None:
    """The first well-formed <question>...</question> <answer>...</answer> pair of a generation, or None."""
    m = QA_TAGS.search(text)
    if not m:
        return None
    q, a = _norm(m.group(1)), _norm(m.group(2))
    return (q, a) if q and a and "<" not in q + a else None


# ---------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoogleParams(PastParams):
    """PaST on LooGLE (paper Sec. 5.1.2, Appendix E). Defaults are the cpu profile (chosen on the source and
    validation documents; see the README's LooGLE section)."""

    non_negative: ClassVar[set] = {"excerpt_words", "chunk_overlap", "qa_overlap", "summaries_per_chunk"}

    seeds: list = field(default_factory=lambda: [0, 1, 2])  # Table 2 over three seeds: one seed cannot tell
    documents: str = SHIPPED                    # "shortdep_qa" (5 shipped), a JSONL path (105: the paper's), or hub
    source_docs: int = 1                        # documents per source round (paper E.1: 5)
    val_docs: int = 1                           # validation documents for RL checkpoint selection (paper: 5)
    test_docs: int = 50                         # at most this many test documents, from index 0 (paper: 50)
    excerpt_words: int = 48                     # text kept around each evidence sentence; 0: whole documents (paper)
    chunk_tokens: list = field(default_factory=lambda: [256])  # phase-1 windows (paper E.2: 1024, 2048, 4096)
    chunk_overlap: int = 32                     # (paper E.2: 256)
    summaries_per_chunk: int = 0                # summaries per chunk (paper E.2: 16; 0: verbatim chunks only, cpu)
    qa_chunk_tokens: list = field(default_factory=lambda: [128])  # QA-generation windows (paper: 128, 256, 512)
    qa_overlap: int = 16                        # (paper E.2: 16)
    qa_per_chunk: int = 2                       # QA pairs per chunk (paper E.2: 8)
    qa_source: str = "recite"                   # "proposed" (paper E.2); cpu: "recite", chosen on non-test docs
    rl_qa_source: str = ""                      # GRPO's questions; "": phase 2's (paper; cpu: chosen on validation)
    rl_holdout: float = 0.0                     # a source's pairs phase 2 leaves to GRPO (cpu: 0, on validation)
    cpu_bf16: bool = True                       # bf16 autocast in training on a CPU (cpu: chosen on non-test docs)
    gen_tokens: int = 128                       # max new tokens per summary or proposed QA pair
    gen_temperature: float = 1.0                # sampling temperature of the data generation (paper E.2)
    sft_max_len: int = 512                      # SFT sequence length in tokens (paper Table 13: 8192)
    phase1_sentences: bool = True               # also each sentence as its own sequence (cpu; as SQuAD's sft_sentences)
    phase1_epochs: int = 8                      # knowledge encoding (paper Table 13: 3; cpu: chosen on validation)
    phase1_lr: float = 2e-4                     # (paper Table 13: 1e-4; SQuAD cpu setting)
    phase2_epochs: int = 2                      # QA adaptation (paper Table 13: 2)
    phase2_lr: float = 2e-5                     # (paper Table 13)
    sft_batch: int = 4                          # per-device batch (paper: micro batch 2 on 8 GPUs)
    phase_schedule: str = "linear"              # LR schedule of both SFT phases (paper Table 13: cosine)
    rl_prompts: int = 16                        # synthetic questions used for GRPO per round
    rl_save_every: int = 8                      # keep a GRPO checkpoint every N steps, chosen on validation (E.4: 40)
    eval_samples: int = 3                       # sampled answers per question, averaged (paper E.5: 3)
    eval_temperature: float = 1.0               # (paper E.5)
    eval_max_new_tokens: int = 64               # answer length at evaluation

    def __post_init__(self):
        super().__post_init__()
        for name in ("chunk_tokens", "qa_chunk_tokens"):
            sizes = getattr(self, name)
            if not sizes or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in sizes):
                raise ValueError(f"parameter {name}={sizes!r}: a non-empty list of positive token counts")
        if self.chunk_overlap >= min(self.chunk_tokens) or self.qa_overlap >= min(self.qa_chunk_tokens):
            raise ValueError("chunk overlaps must be smaller than the chunks")
        if self.phase_schedule not in SCHEDULES:
            raise ValueError(f"phase_schedule={self.phase_schedule!r}: one of {SCHEDULES}")
        if self.qa_source not in QA_SOURCES:
            raise ValueError(f"qa_source={self.qa_source!r}: one of {QA_SOURCES}")
        if self.rl_qa_source not in ("", *QA_SOURCES):
            raise ValueError(f"rl_qa_source={self.rl_qa_source!r}: empty (phase 2's pairs) or one of {QA_SOURCES}")
        if not 0 <= self.rl_holdout < 1:
            raise ValueError(f"rl_holdout={self.rl_holdout!r}: a share in [0, 1) of a source's pairs")
        if self.gen_temperature < 0 or self.eval_temperature < 0:
            raise ValueError("temperatures must be >= 0")

    def check_inputs(self) -> None:
        docs = load_documents(self.documents)
        split(len(docs), self.source_docs, self.rounds, self.val_docs, self.test_docs)


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------

BASE, TARGET = "Base", "Target SFT"
VARIANTS = ("source", "target")
# Paper Table 2 (Qwen2.5-7B-Instruct, GPT-4.1 judge, test documents 0-49), reported, not measured here.
PAPER_TABLE2 = {TARGET: 30.1, "PaST (1 round)": 35.0, "PaST (2 rounds)": 38.1}


def past_label(k: int) -> str:
    return f"PaST ({k} round{'s' if k > 1 else ''})"


class Loogle:
    """LooGLE for the PaST engine (see the module docstring)."""

    name = "loogle"
    params = LoogleParams
    code = ("pastkit.benchmarks.loogle",)

    def judge(self, p: LoogleParams):
        return make_judge(p.judge, JUDGE)

    # -- documents ------------------------------------------------------------------------------------
    def _docs(self, p: LoogleParams) -> list[dict]:
        if getattr(self, "_loaded", (None,))[0] != p.documents:
            self._loaded = (p.documents, load_documents(p.documents))
        return self._loaded[1]

    def _domain(self, p: LoogleParams, name: str, indices: list[int]) -> Domain:
        docs = []
        for i in indices:
            d = self._docs(p)[i]
            texts, qa, dropped = excerpts(d, p.excerpt_words)
            docs.append({"index": i, "title": d["title"], "texts": texts, "qa": qa, "dropped": dropped})
        key = digest([p.excerpt_words, [(d["title"], d["texts"], d["qa"]) for d in docs]])
        return Domain(name, {"docs": docs}, key)

    def splits(self, p: LoogleParams) -> dict:
        return split(len(self._docs(p)), p.source_docs, p.rounds, p.val_docs, p.test_docs)

    def source_rounds(self, p: LoogleParams) -> list[Domain]:
        return [self._domain(p, f"source round {k}", ix) for k, ix in enumerate(self.splits(p)["source"], 1)]

    def validation(self, p: LoogleParams) -> Domain:
        return self._domain(p, "validation", self.splits(p)["validation"])

    def target_units(self, p: LoogleParams) -> list[Domain]:
        return [self._domain(p, "test", self.splits(p)["test"])]

    def gate_unit(self, engine: Engine, domain: Domain) -> Domain:
        """RL's gate: the real LooGLE questions of the round's own source documents. GRPO asks synthetic
        questions (`rl_task`) and the test documents are other documents, so these are neither RL prompts nor
        test items."""
        return Domain(f"{domain.name}, its LooGLE questions", domain.data, f"{domain.key}/gate")

    # -- synthetic data (E.2), made by the base model ------------------------------------------------
    def synthetic(self, engine: Engine, domain: Domain) -> dict:
        """Summaries (Table 12) for a domain, its QA chunks, and the QA pairs the base model proposed from them
        (Tables 10-11; only when `qa_source` or `rl_qa_source` is "proposed"); cached, one stage per domain
        whatever the sources. Returns {"chunks", "qa_chunks", "summaries", "proposed_qa", "proposed",
        "malformed", "file"}; `qa_pairs` turns it into a source's pairs."""
        from transformers import AutoTokenizer

        p = engine.p
        propose = "proposed" in (p.qa_source, p.rl_qa_source)

        def build(tmp: Path):
            tok = AutoTokenizer.from_pretrained(engine.base)
            rng = random.Random(engine.seed)
            chunk_rows, qa_rows = [], []
            for d in domain.data["docs"]:
                for text in d["texts"]:
                    chunk_rows += [(d["title"], c) for size in p.chunk_tokens
                                   for c in chunks(text, tok, size, p.chunk_overlap)]
                    qa_rows += [(d["title"], c) for size in p.qa_chunk_tokens
                                for c in chunks(text, tok, size, p.qa_overlap)]
            sum_jobs = [(t, c, rng.randrange(len(SUMMARY_TEMPLATES))) for t, c in chunk_rows
                        for _ in range(p.summaries_per_chunk)]
            qa_jobs = [(t, c, (i * p.qa_per_chunk + j) % len(VARIATIONS)) for i, (t, c) in enumerate(qa_rows)
                       for j in range(p.qa_per_chunk)] if propose else []
            prompts = [SUMMARY_TEMPLATES[k].format(text_segment=c) for _, c, k in sum_jobs] + \
                      [PROPOSER.format(task=VARIATIONS[k][1], example=VARIATIONS[k][2], text_segment=c)
                       for _, c, k in qa_jobs]
            outs = [o[0].strip() for o in generate(
                engine.base, prompts, max_new_tokens=p.gen_tokens, temperature=p.gen_temperature, top_p=1.0,
                seed=engine.seed, use_vllm=p.use_vllm, desc="synthetic data", cpu_bf16=p.cpu_bf16)] if prompts else []
            summaries = [{"title": t, "chunk": c, "template": k, "summary": s}
                         for (t, c, k), s in zip(sum_jobs, outs) if s]
            proposed_qa, malformed = [], []
            for (t, _, k), g in zip(qa_jobs, outs[len(sum_jobs):]):
                pair = parse_qa(g)
                (proposed_qa.append({"title": t, "variation": VARIATIONS[k][0], "question": pair[0],
                                     "answer": pair[1]}) if pair else malformed.append(g[:300]))
            (tmp / "synthetic.json").write_text(json.dumps(
                {"chunks": [{"title": t, "chunk": c} for t, c in chunk_rows],
                 "qa_chunks": [{"title": t, "chunk": c} for t, c in qa_rows], "summaries": summaries,
                 "proposed_qa": proposed_qa, "proposed": len(qa_jobs), "malformed": malformed}, indent=1))

        key = {"base": engine.base_key, "domain": domain.key,
               "gen": [p.chunk_tokens, p.chunk_overlap, p.summaries_per_chunk, p.qa_chunk_tokens, p.qa_overlap,
                       p.qa_per_chunk, propose, p.gen_tokens, p.gen_temperature]}
        stage = engine.stage("synthetic", key, build, expect=("synthetic.json",),
                             code=("pastkit.generation", *self.code))
        return {**json.loads((stage.path / "synthetic.json").read_text()), "file": stage.path / "synthetic.json"}

    def qa_pairs(self, engine: Engine, domain: Domain, source: str = "") -> list[dict]:
        """A domain's QA pairs of one `source` (default: `qa_source`, phase 2's): the base model's proposals, or
        pairs made from the same QA chunks without a model (`sentence_pairs`). None is a clear error."""
        p, data = engine.p, self.synthetic(engine, domain)
        source = source or p.qa_source
        if source == "proposed":
            qa = data["proposed_qa"]
        else:
            qa = [{"title": c["title"], "variation": source, "question": q, "answer": a} for c in data["qa_chunks"]
                  for q, a in sentence_pairs(c["title"], c["chunk"], p.qa_per_chunk, source)]
        if not qa:
            why = (f"the model proposed no well-formed question-answer pair ({len(data['malformed'])} of "
                   f"{data['proposed']} generations malformed; see {data['file']}); raise qa_per_chunk, use a "
                   "stronger model, or a model-free source ('recite', 'cloze', 'keywords')" if source == "proposed"
                   else f"no sentence of 8 words or more in its QA chunks to make {source!r} pairs from")
            raise ValueError(f"{domain.name}: {why}")
        return qa

    def held_out(self, engine: Engine, n: int) -> set[int]:
        """Which of a source domain's n QA pairs its phase 2 leaves for GRPO (`rl_holdout`): a share drawn with
        the seed. The model-free sources make their pairs from the same sentences in the same order, so the
        indices name the same sentences whichever source GRPO asks."""
        return set(random.Random(engine.seed).sample(range(n), round(engine.p.rl_holdout * n)))

    def sft_phases(self, engine: Engine, domain: Domain, variant: str) -> list[SFTPhase]:
        """Phase 1, knowledge encoding: verbatim chunks, chunk -> summary, summary -> chunk (and, with
        `phase1_sentences`, every sentence on its own). Phase 2, QA adaptation: the `qa_source` pairs as
        closed-book chat turns (the format RL and evaluation use). Same for source and target, except that a
        source's phase 2 leaves out the `rl_holdout` share that its GRPO asks."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown SFT data variant {variant!r}; known: {VARIANTS}")
        p, data = engine.p, self.synthetic(engine, domain)
        rng = random.Random(engine.seed)
        phase1 = [{"prompt": f"{c['title']}\n", "completion": c["chunk"]} for c in data["chunks"]]
        if p.phase1_sentences:  # each sentence of the text as a sequence of its own (README: what teaches facts)
            phase1 += [{"prompt": f"{d['title']}\n", "completion": s} for d in domain.data["docs"]
                       for text in d["texts"] for s in split_sentences(text)]
        for s in data["summaries"]:
            phase1.append({"prompt": SUMMARY_TEMPLATES[s["template"]].format(text_segment=s["chunk"]),
                           "completion": s["summary"]})
            phase1.append({"prompt": rng.choice(RECALL_TEMPLATES).format(summary=s["summary"]),
                           "completion": s["chunk"]})
        qa = self.qa_pairs(engine, domain)
        if variant == "source":  # the pairs GRPO will ask (`rl_holdout`) stay out of the source's phase 2
            held = self.held_out(engine, len(qa))
            qa = [q for i, q in enumerate(qa) if i not in held]
            if not qa:
                raise ValueError(f"{domain.name}: rl_holdout={p.rl_holdout:g} leaves phase 2 no pair; lower it")
        phase2 = [{"prompt": [{"role": "user", "content": QA_PROMPT.format(question=q["question"])}],
                   "completion": [{"role": "assistant", "content": q["answer"]}]} for q in qa]
        return [SFTPhase(f"{domain.name}/phase1", phase1,
                         SFTSpec(p.phase1_epochs, p.phase1_lr, p.sft_batch, 1, p.sft_max_len,
                                 schedule=p.phase_schedule)),
                SFTPhase(f"{domain.name}/phase2", phase2,
                         SFTSpec(p.phase2_epochs, p.phase2_lr, p.sft_batch, 1, p.sft_max_len,
                                 schedule=p.phase_schedule))]

    def rl_task(self, engine: Engine, domain: Domain) -> RLTask:
        """The domain's synthetic questions (`rl_qa_source`, else phase 2's), closed-book; reward = the judge vs
        their answers. A model that phase 2 taught its own pairs can get the same reward in every sample of a
        group (nothing to learn): `rl_qa_source` asks questions of another kind, `rl_holdout` asks about the
        sentences phase 2 left out (facts phase 1 taught, questions never trained; README, LooGLE)."""
        p = engine.p
        source = p.rl_qa_source or p.qa_source
        qa, data = self.qa_pairs(engine, domain, source), f"{source} QA pairs"
        if p.rl_holdout:
            held = self.held_out(engine, len(self.qa_pairs(engine, domain)))
            qa = [q for i, q in enumerate(qa) if i in held]
            data += f", the {p.rl_holdout:g} share phase 2 left out"
            if not qa:
                raise ValueError(f"{domain.name}: rl_holdout={p.rl_holdout:g} leaves no pair for GRPO; raise it")
        return closed_book_task(qa, QA_PROMPT, engine.judge, engine.seed, p.rl_prompts, data=data)

    # -- scoring (E.5) ---------------------------------------------------------------------------------
    def scoring(self, engine: Engine) -> dict:
        p = engine.p
        return {"prompt": QA_PROMPT, "samples": p.eval_samples, "temperature": p.eval_temperature,
                "max_new_tokens": p.eval_max_new_tokens}

    def score(self, engine: Engine, model, unit: Domain, split: str) -> pd.DataFrame:
        """`eval_samples` sampled closed-book answers per real LooGLE question; each metric is their mean."""
        p = engine.p
        items = [(d["index"], j, q) for d in unit.data["docs"] for j, q in enumerate(d["qa"])]
        preds = generate(None, [QA_PROMPT.format(question=q["Q"]) for *_, q in items],
                         max_new_tokens=p.eval_max_new_tokens, samples=p.eval_samples,
                         temperature=p.eval_temperature, top_p=1.0, seed=engine.seed, desc="answer",
                         model_and_tok=model.load())
        rows = []
        for (doc, j, q), answers in zip(items, preds):
            row = {"item": f"{doc}:{j}", "document": doc, "question": q["Q"], "gold": q["A"],
                   "prediction": answers[0], "predictions": json.dumps(answers),
                   "score": sum(engine.judge.score(q["Q"], q["A"], a) for a in answers) / len(answers)}
            row.update({m: sum(f(q["A"], a) for a in answers) / len(answers) for m, f in STRICT_METRICS.items()})
            rows.append(row)
        return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# How the cpu settings were chosen (bench/loogle_settings.py)
# ---------------------------------------------------------------------------------------------------

def settings_check(variants: dict[str, LoogleParams], seed: int = 0, log=say) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How the cpu SFT settings are chosen without test documents: for each named variant of the params, the
    knowledge SFT (both phases) on every document that is not a test document (validation and source rounds,
    each its own domain, the same stages notebook 03 trains on them), scored on their real questions beside the
    base model. Returns (one row per variant and Base: score, strict metrics, words per answer, and the paired
    difference to Base with its interval over documents; every answer)."""
    bench, frames = Loogle(), []
    for name, p in variants.items():
        engine = Engine(bench, p, seed, log)
        for unit in [bench.validation(p), *bench.source_rounds(p)]:
            for method, model in ((BASE, engine.base_model()), (name, engine.adapt(unit, "target_sft"))):
                frames.append(engine.answers(model, unit, "validation").assign(method=method, seed=seed,
                                                                               domain=unit.name))
    answers = pd.concat(frames, ignore_index=True).drop_duplicates(["method", "seed", "item"])
    answers["words"] = [sum(len(a.split()) for a in json.loads(x)) / len(json.loads(x)) for x in answers.predictions]
    table = summarize(answers, baseline=BASE, metrics=("score", *STRICT_METRICS))
    table["words per answer"] = table.method.map(answers.groupby("method")["words"].mean().round(1))
    per_doc = answers.pivot_table(index="method", columns="document", values="score", sort=False) * 100
    table["per document"] = ["; ".join(f"{d}: {v:.1f}" for d, v in per_doc.loc[m].items()) for m in table.method]
    return table, answers


def rl_source_check(variants: dict[str, LoogleParams], log=say) -> pd.DataFrame:
    """How GRPO's questions are chosen without test documents: for each named variant of the params, source
    distillation (both rounds, first seed), each round's GRPO reward, and the validation document's score with
    the chosen skill vector added to its Target SFT, beside that Target SFT alone (the checkpoint selection's own
    numbers, E.4). One row per variant and round."""
    rows = []
    for name, p in variants.items():
        study = Study.run(Loogle(), p, log)
        engine, validation = study.engines[0], study.benchmark.validation(p)
        target = float(engine.answers(engine.adapt(validation, "target_sft"), validation, "validation")["score"].mean())
        for r, rl in zip(study.rounds[engine.seed], rounds_table(study).itertuples()):
            chosen = r.selection["scores"][r.selection["chosen"]] if r.selection else float("nan")
            rows.append({"variant": name, "round": r.k, "reward first / last quarter":
                         f"{rl.reward_start:.3f} / {rl.reward_end:.3f}", "reward never varied": rl.reward_never_varied,
                         "‖v‖": rl.skill_vector_norm, "chosen step": r.selection and r.selection["chosen"],
                         "validation: Target SFT %": round(100 * target, 1),
                         "validation: + v %": round(100 * chosen, 1),
                         "gain (points)": round(100 * (chosen - target), 1)})
    return pd.DataFrame(rows)
