"""LooGLE: documents are parsed safely and refused with the line named; the split by index is the paper's on a
105-document file and never lets a test document into training; excerpts, proposed QA pairs and cloze pairs;
the settings check stays off the test documents."""

import json
from dataclasses import replace

import pytest

from pastkit.benchmarks.loogle import (
    Loogle,
    LoogleParams,
    excerpts,
    load_documents,
    parse_qa,
    sentence_pairs,
    settings_check,
    split,
)
from pastkit.config import load_profile
from pastkit.past import Engine


def _line(title="T", text="Some text.", qa=None):
    qa = qa if qa is not None else [{"S": "Some text.", "Q": "What?", "A": "Text."}]
    return json.dumps({"input": text, "title": title, "qa_pairs": repr(qa), "output": "none"})


def test_the_shipped_sample_loads_and_splits():
    docs = load_documents("shortdep_qa")
    assert [len(d["qa"]) for d in docs] == [11, 12, 16, 25, 16]
    assert docs[0]["title"] == "José Luis Picardo"
    assert split(5, 1, 2, 1, 50) == {"source": [[4], [3]], "validation": [2], "test": [0, 1]}
    LoogleParams().check_inputs()


def test_a_full_105_document_file_gets_the_papers_split(tmp_path):
    path = tmp_path / "shortdep_qa.jsonl"
    path.write_text("\n".join(_line(title=f"doc {i}") for i in range(105)) + "\n")
    params = LoogleParams(documents=str(path), source_docs=5, val_docs=5)
    params.check_inputs()
    docs = load_documents(str(path))
    s = split(len(docs), params.source_docs, params.rounds, params.val_docs, params.test_docs)
    assert s["source"] == [list(range(100, 105)), list(range(95, 100))]
    assert s["validation"] == list(range(90, 95)) and s["test"] == list(range(50))
    assert [docs[i]["title"] for i in s["source"][0]] == [f"doc {i}" for i in range(100, 105)]
    trained = {i for r in s["source"] for i in r} | set(s["validation"])
    assert not trained & set(s["test"])
    with pytest.raises(ValueError, match="at least one test document"):
        split(3, 1, 2, 1, 50)


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2 is not JSON"),
    (json.dumps({"input": "x", "title": "t"}), "line 2: needs string fields"),
    (json.dumps({"input": "x", "title": "t", "qa_pairs": "[{'Q': 'q'"}), "line 2: 'qa_pairs' is not a Python literal"),
    (json.dumps({"input": "x", "title": "t", "qa_pairs": "__import__('os').system('echo pwned')"}),
     "line 2: 'qa_pairs' is not a Python literal"),
    (json.dumps({"input": "x", "title": "empty", "qa_pairs": "[]"}), "line 2: document 'empty' has no questions"),
    (json.dumps({"input": "x", "title": "t", "qa_pairs": "[{'Q': 'q', 'A': ''}]"}), "line 2: a question-answer pair"),
])
def test_bad_documents_are_refused_naming_the_line(tmp_path, line, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(_line() + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as e:
        load_documents(str(path))
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="shortdep_qa"):
        load_documents(str(tmp_path / "missing.jsonl"))


def test_excerpts_keep_the_text_around_evidence_and_count_what_they_drop():
    words = [f"w{i}" for i in range(400)]
    words[100:106] = ["The", "river", "Qel", "floods", "every", "spring.[6]"]
    words[120:126] = ["Its", "wide", "delta", "is", "always", "green."]
    doc = {"text": " ".join(words), "qa": [
        {"S": "The river Qel floods every spring.", "Q": "What floods?", "A": "The Qel."},  # citation mark in text
        {"S": "Its wide  delta is\n‘always’ green.", "Q": "What colour?", "A": "Green."},  # spacing, quotes differ
        {"S": "Nowhere in the document at all, not a word of it.", "Q": "?", "A": "-"}]}
    texts, kept, dropped = excerpts(doc, 40)
    assert dropped == 1 and [q["Q"] for q in kept] == ["What floods?", "What colour?"]
    assert len(texts) == 1  # the two windows overlap and are merged
    assert "The river Qel floods every spring.[6]" in texts[0] and "Its wide delta is always green." in texts[0]
    assert texts[0].split()[0] == "w90" and len(texts[0].split()) == 60  # from a quarter window before the first
    whole, all_qa, none = excerpts(doc, 0)
    assert whole == [doc["text"]] and len(all_qa) == 3 and none == 0


@pytest.mark.parametrize("text, pair", [
    ("<question> What is X? </question> <answer> X is Y. </answer>", ("What is X?", "X is Y.")),
    ("Sure! <question>Q?</question>\n<answer>A</answer> trailing", ("Q?", "A")),
    ("<question>Q?</question>", None),                      # no answer
    ("<question></question><answer>A</answer>", None),      # empty question
    ("<question>Q <answer>A</answer>", None),               # unclosed tag
    ("question: Q? answer: A", None),                        # no tags at all
])
def test_proposed_pairs_are_parsed_or_rejected(text, pair):
    assert parse_qa(text) == pair


def test_sentence_pairs_ask_for_the_end_of_a_sentence():
    pairs = sentence_pairs("Doc", "Short one. The old lighthouse keeper painted the tower red every spring.", 3)
    assert pairs == [('In "Doc", how does this sentence end: "The old lighthouse keeper painted the ..."?',
                      "tower red every spring.")]  # ten words: the first six asked, the last four answered


def test_recite_and_keyword_pairs_are_answered_with_the_whole_sentence():
    text = "Short one. The old lighthouse keeper painted the tower red every spring."
    sentence = "The old lighthouse keeper painted the tower red every spring."
    (recite,) = sentence_pairs("Doc", text, 3, "recite")
    assert recite == (sentence_pairs("Doc", text, 3)[0][0], sentence)  # the cloze question, the whole sentence
    (keywords,) = sentence_pairs("Doc", text, 3, "keywords")
    # the four longest words in the sentence's order, trailing punctuation stripped
    assert keywords == ('What does "Doc" say about lighthouse, keeper, painted, spring?', sentence)


def test_loogle_params_are_validated():
    with pytest.raises(ValueError, match="chunk_tokens"):
        LoogleParams(chunk_tokens=[])
    with pytest.raises(ValueError, match="qa_source"):
        LoogleParams(qa_source="gpt")
    with pytest.raises(ValueError, match="rl_qa_source"):
        LoogleParams(rl_qa_source="gpt")
    with pytest.raises(ValueError, match="phase_schedule"):
        LoogleParams(phase_schedule="cosine_with_restarts")
    with pytest.raises(ValueError, match="overlaps"):
        LoogleParams(chunk_tokens=[32], chunk_overlap=32)
    assert LoogleParams(excerpt_words=0).excerpt_words == 0  # 0 means whole documents
    with pytest.raises(ValueError, match="source_docs"):
        LoogleParams(source_docs=0)


def test_settings_check_trains_and_scores_no_test_document(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    p = LoogleParams.from_profile({**load_profile("smoke"), "summaries_per_chunk": 0})
    table, answers = settings_check({"cloze": p, "keywords": replace(p, qa_source="keywords")}, log=lambda *_: None)
    assert list(table.method) == ["Base", "cloze", "keywords"]
    test_docs = set(Loogle().splits(p)["test"])
    assert set(answers.document) == {2, 3, 4} and not test_docs & set(answers.document)  # validation + sources
    assert (table.n_documents == 3).all() and (table["words per answer"] > 0).all()
    assert table.set_index("method").loc["Base", "score_vs_baseline"] == 0
    trained = {json.loads((s / "stage.json").read_text())["inputs"]["phase"] for s in (tmp_path / "runs").glob("sft-*")}
    assert trained == {f"{d}/phase{k}" for d in ("validation", "source round 1", "source round 2") for k in (1, 2)}


def test_grpo_asks_the_rl_sources_questions_and_phase_2_trains_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    p = LoogleParams.from_profile({**load_profile("smoke"), "summaries_per_chunk": 0, "qa_source": "recite",
                                   "rl_qa_source": "keywords"})
    bench, quiet = Loogle(), (lambda *_: None)
    engine = Engine(bench, p, 0, quiet)
    domain = bench.source_rounds(p)[0]
    phase2 = bench.sft_phases(engine, domain, "source")[1].records
    assert phase2 and all("how does this sentence end" in r["prompt"][0]["content"] for r in phase2)
    asked = bench.rl_task(engine, domain).columns["question"]
    assert asked and all(q.startswith("What does") for q in asked)  # keywords questions, not phase 2's
    same = bench.rl_task(Engine(bench, replace(p, rl_qa_source=""), 0, quiet), domain).columns["question"]
    assert same and all("how does this sentence end" in q for q in same)  # empty: phase 2's own pairs
    # one synthetic stage per domain serves every source: nothing (summaries, proposals) is generated twice
    assert len(list((tmp_path / "runs").glob("synthetic-*"))) == 1


def test_rl_holdout_keeps_grpos_questions_out_of_the_sources_phase_2_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    p = LoogleParams.from_profile({**load_profile("smoke"), "summaries_per_chunk": 0, "qa_source": "recite",
                                   "rl_holdout": 0.5, "rl_prompts": 100})
    bench, quiet = Loogle(), (lambda *_: None)
    engine = Engine(bench, p, 0, quiet)
    domain = bench.source_rounds(p)[0]
    answer = lambda r: r["completion"][0]["content"]  # noqa: E731
    trained = {answer(r) for r in bench.sft_phases(engine, domain, "source")[1].records}
    everything = {answer(r) for r in bench.sft_phases(engine, domain, "target")[1].records}
    asked = set(bench.rl_task(engine, domain).columns["gold"])
    assert trained and asked and not trained & asked  # GRPO asks only what the source's phase 2 left out
    assert trained | asked == everything  # and a target's phase 2 trains every pair
    assert abs(len(asked) - len(everything) / 2) <= 1
    with pytest.raises(ValueError, match="rl_holdout"):
        LoogleParams(rl_holdout=1.0)
    greedy = Engine(bench, replace(p, rl_holdout=0.9999), 0, quiet)
    with pytest.raises(ValueError, match="source round 1: rl_holdout=0.9999 leaves phase 2 no pair"):
        bench.sft_phases(greedy, domain, "source")
