"""RL's gate: scored on source questions RL never trained on and no test item, and a run whose reward never varies
fails it."""

from types import SimpleNamespace

import pandas as pd
import pytest
from test_engine import DOCS, Toy, ToyParams

from pastkit.benchmarks.squad import Squad, SquadParams, questions_of
from pastkit.judges import TokenF1Judge
from pastkit.past import Domain, Study, gate_verdict, rl_gate
from pastkit.skill_rl import RLTask, rl_split


def test_rl_split_is_a_partition():
    items = list(range(34))
    chosen, rest = rl_split(items, seed=3, n=24)
    assert len(chosen) == 24 and not set(chosen) & set(rest) and sorted(chosen + rest) == items
    assert rl_split(items, 3, 24) == (chosen, rest)  # the same seed, the same split


@pytest.mark.parametrize("seed", [0, 1])
def test_squads_held_out_questions_are_never_rl_prompts_or_test_items(seed):
    p = SquadParams(rl_prompts=20)
    engine = SimpleNamespace(seed=seed, p=p, judge=TokenF1Judge())
    bench = Squad()
    for domain in bench.source_rounds(p):
        prompts = set(bench.rl_task(engine, domain).columns["question"])
        held = {q["question"] for q in questions_of(bench.gate_unit(engine, domain).data["passages"])}
        every = {q["question"] for q in questions_of(domain.data["passages"])}
        assert held and not held & prompts and held | prompts == every
        tests = {q["question"] for regime in ("cpt", "single") for unit in bench.target_units(p, regime)
                 for q in questions_of(unit.data["passages"])}
        assert not held & tests


def test_every_question_an_rl_prompt_leaves_no_gate_and_says_so():
    p = SquadParams(rl_prompts=10_000)
    engine = SimpleNamespace(seed=0, p=p, judge=TokenF1Judge())
    assert Squad().gate_unit(engine, Squad().source_rounds(p)[0]) is None
    gate = pd.DataFrame([{"seed": 0, "round": 2, "metric": "none held out", "items": 0, "documents": 0,
                          "passed": False}])
    assert "round 2: no gate (RL trained on every source question" in gate_verdict(gate)
    assert "RL's gate fails" in gate_verdict(gate)


def test_squads_rl_reward_is_the_judge_or_the_gold_answer_contained():
    bench = Squad()
    domain = bench.source_rounds(SquadParams())[0]
    f1_task, task = (bench.rl_task(SimpleNamespace(seed=0, p=SquadParams(rl_reward=r), judge=TokenF1Judge()), domain)
                     for r in ("judge", "contains"))
    prompt, gold, question = task.prompts[0], task.columns["gold"][0], task.columns["question"][0]

    def rewards(t, answers):  # each answer to the task's first question
        n = len(answers)
        return t.reward_funcs[0]([prompt] * n, answers, gold=[gold] * n, question=[question] * n)

    long_right = f"Many would say, after thinking it over at length, {gold}"
    f1, contained = rewards(f1_task, [long_right, gold]), rewards(task, [long_right, gold, "no idea"])
    assert contained == [1.0, 1.0, 0.0] and f1[0] < f1[1] == 1.0  # token F1 docks the long right answer
    assert task.describe["reward"]["judge"] == "contains" != f1_task.describe["reward"]["judge"]  # keys the stage
    with pytest.raises(ValueError, match="rl_reward"):
        SquadParams(rl_reward="f1")


class HeldOutToy(Toy):
    """The toy benchmark with a held-out unit of its own, and a reward that never varies."""

    def rl_task(self, engine, domain):
        return RLTask([f"Tell me about: {d}" for d in domain.data], [lambda prompts, completions, **_: [0.5] *
                                                                     len(completions)], describe={"reward": "0.5"})

    def gate_unit(self, engine, domain):
        return Domain(f"{domain.name} held out", DOCS["target"], f"{domain.key}/held-out")


def test_rl_whose_reward_never_varies_fails_the_gate(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    study = Study.run(HeldOutToy(), ToyParams(rounds=1, rl_beta=0.0), log=lambda *_: None)
    gate = rl_gate(study)
    assert list(gate.metric) == ["score"] and not gate.passed.any()
    assert (gate.delta == 0).all() and (gate[["lo", "hi"]] == 0).all().all()
    assert {"metric", "delta", "lo", "hi", "documents", "mde"} <= set(gate.columns)
    assert "RL's gate fails" in gate_verdict(gate) and "cannot show a transferred skill" in gate_verdict(gate)
    assert any("never varied" in f for f in study.flags)


def test_a_gate_whose_interval_is_above_zero_passes():
    gate = pd.DataFrame([{"seed": 0, "round": 1, "metric": "score", "delta": 6.0, "lo": 1.5, "hi": 10.0, "mde": 5.0,
                          "items": 40, "documents": 12, "passed": True}])
    assert gate_verdict(gate).startswith("RL's gate passes: on held-out source questions θ_rl beats θ_init on the "
                                         "score with an interval above zero in 1 of 1 rounds (seed 0 round 1)")


def test_a_round_of_one_document_has_no_interval_and_cannot_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))

    class OneDocument(HeldOutToy):
        def score(self, engine, model, unit, split):
            return super().score(engine, model, unit, split).assign(document=0)

    study = Study.run(OneDocument(), ToyParams(rounds=1, rl_beta=0.0), log=lambda *_: None)
    gate = rl_gate(study)
    assert gate.lo.isna().all() and not gate.passed.any() and "one document: no interval" in gate_verdict(gate)


def test_a_round_with_nothing_held_out_is_a_row_of_the_gate_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))

    class NothingHeldOut(HeldOutToy):
        def gate_unit(self, engine, domain):
            return None

    gate = rl_gate(Study.run(NothingHeldOut(), ToyParams(rounds=1, rl_beta=0.0), log=lambda *_: None))
    assert list(gate.metric) == ["none held out"] and gate["items"].tolist() == [0] and not gate.passed.any()


def test_an_interval_above_zero_over_too_few_documents_does_not_pass():
    """Over three documents a bootstrap interval above zero is no evidence (a handful of distinct resamples)."""
    from pastkit.past import GATE_DOCUMENTS, gate_passes

    assert GATE_DOCUMENTS == 5 and gate_passes(10.0, 5) and not gate_passes(10.0, 3) and not gate_passes(0.0, 12)
    gate = pd.DataFrame([{"seed": 0, "round": 1, "metric": "score", "delta": 24.5, "lo": 10.0, "hi": 42.9, "mde": 58.9,
                          "items": 4, "documents": 3, "passed": gate_passes(10.0, 3)}])
    assert "3 documents; too few to pass, 5 needed" in gate_verdict(gate) and "RL's gate fails" in gate_verdict(gate)


def test_the_verdict_decides_on_the_score_and_counts_passes_against_chance():
    """A round passes on its score; another metric above zero is named, not counted. One pass among six rounds
    is about what chance gives (14 % of studies with no effect), two of six are not (0.9 %)."""
    from pastkit.past import chance_of_passes

    def row(seed, rnd, metric, delta, lo, passed):
        return {"seed": seed, "round": rnd, "metric": metric, "delta": delta, "lo": lo, "hi": delta + 5, "mde": 4.0,
                "items": 30, "documents": 6, "passed": passed}

    gate = pd.DataFrame([row(0, 1, "score", 1.0, -2.0, False), row(0, 1, "contains", 9.0, 3.0, True),
                         row(0, 1, "exact", 0.0, 0.0, False), row(1, 1, "score", -1.0, -4.0, False),
                         row(1, 1, "contains", 2.0, -1.0, False)])
    text = gate_verdict(gate)
    assert text.startswith("RL's gate fails") and "in any of 2 rounds" in text
    assert "Above zero on another metric, not counted: seed 0 round 1 (contains)" in text
    assert "seed 0 round 1 score +1.0" in text and "seed 0 round 1 contains +9.0" in text  # its score, what passed
    assert "seed 1 round 1 score -1.0" in text and "seed 1 round 1 contains" not in text and "exact" not in text

    assert abs(chance_of_passes(1, 6) - (1 - 0.975 ** 6)) < 1e-12 and abs(chance_of_passes(0, 6) - 1) < 1e-12
    six = pd.DataFrame([row(s, 1, "score", 6.0 if s < 2 else 0.0, 1.0 if s < 2 else -3.0, s < 2) for s in range(6)])
    assert gate_verdict(six.assign(passed=six.seed < 1)).startswith("RL's gate is inconclusive: 1 of 6 rounds")
    assert "in 14.1 % of studies" in gate_verdict(six.assign(passed=six.seed < 1))
    assert gate_verdict(six).startswith("RL's gate passes") and "in 0.9 % of studies" in gate_verdict(six)
