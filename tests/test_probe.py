"""The knowledge probe: a model that knows nothing scores 0 on its invented facts; one taught them scores above."""

import pandas as pd

from pastkit.benchmarks.squad import (
    BASE,
    PROBE,
    QA_PROMPT,
    Squad,
    SquadParams,
    knowledge_probe,
    load_passages,
    passage_domain,
)
from pastkit.config import load_profile
from pastkit.generation import load_model
from pastkit.knowledge import SFTSpec, train_sft
from pastkit.past import Engine, Model, digest


def test_the_probe_measures_knowledge_put_in_by_training(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    params = SquadParams.from_profile({**load_profile("smoke"), "eval_max_new_tokens": 24})
    table, answers = knowledge_probe(params, regime="cpt", variant="sentences", log=lambda *_: None)
    base = table.set_index("method").loc[BASE]
    assert base.n_items == 40 and base.contains == 0 and base.exact == 0  # invented facts: nothing to know

    # a model taught the answers themselves (question -> answer, many epochs) must score above the base model
    passages = load_passages(PROBE)
    records = [{"prompt": [{"role": "user", "content": QA_PROMPT.format(question=q["question"])}],
                "completion": [{"role": "assistant", "content": q["answer"]}]}
               for p in passages for q in p["questions"]]
    engine = Engine(Squad(), params, seed=0, log=lambda *_: None)
    taught = tmp_path / "taught"
    train_sft(engine.base, records, taught, SFTSpec(epochs=60, lr=3e-3, batch=8, grad_accum=1, max_len=96), seed=0,
              log=lambda *_: None)
    unit = passage_domain("probe", [{**x, "pid": f"probe-{i}"} for i, x in enumerate(passages)], "cpt")
    scored = engine.answers(Model({"dir": digest(str(taught))}, lambda: load_model(taught)), unit)
    assert scored["contains"].mean() > 0.25, scored[["gold", "prediction"]].head(10)
    assert isinstance(answers, pd.DataFrame) and set(answers.method) == {BASE, "SFT (cpt, sentences)"}
