"""ToolBench: the simulator's errors, the F.3.1 reward arithmetic, the ReAct parser, observation masking, the data."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pandas as pd
import pytest

from pastkit.benchmarks.toolbench.agent import (
    FINISH_REWARD,
    TURN_LIMIT_PENALTY,
    Episode,
    Outcome,
    RulesSimulator,
    RulesSolutionJudge,
    Step,
    Task,
    Turn,
    act,
    function_name,
    parse_step,
    run_episodes,
)
from pastkit.benchmarks.toolbench.benchmark import (
    CATEGORIES,
    Toolbench,
    ToolbenchParams,
    alignment_records,
    derive,
    load_toolbench,
)
from pastkit.benchmarks.toolbench.fig3 import fig3_table, markdown_fig3, paired_runs, plot_fig3
from pastkit.past import RANDOM_CONTROL

API = {"category_name": "Movies", "tool_name": "Film DB", "api_name": "Get Movie", "api_description": "A movie by id",
       "required_parameters": [{"name": "movie_id", "type": "NUMBER", "description": "", "default": "7"}],
       "optional_parameters": [{"name": "lang", "type": "STRING", "description": "", "default": "en"},
                               {"name": "adult", "type": "BOOLEAN", "description": "", "default": "false"},
                               {"name": "day", "type": "DATE (YYYY-MM-DD)", "description": "", "default": ""}],
       "method": "GET", "template_response": {"title": "str", "year": "int",
                                              "cast": [{"name": "str", "_list_length": 9}]}}
NAME = function_name("Film DB", "Get Movie")
TOOLS = {NAME: API}


def test_function_names_follow_toolbench():
    assert NAME == "get_movie_for_film_db"
    assert function_name("10000+ Anime Quotes", "Id") == "is_id_for_get_10000_anime_quotes"


@pytest.mark.parametrize("text, error", [
    ("I will look it up for you.", "no 'Action:' field"),
    ("Thought: x\nAction: get_movie_for_film_db", "no 'Action Input:' field"),
    ("Thought: x\nAction: get_movie_for_film_db\nAction Input: {movie_id: 7}", "not valid JSON"),
    ("Thought: x\nAction: get_movie_for_film_db\nAction Input: [7]", "must be a JSON object"),
    ("Thought: x\nAction: get_movie_for_film_db\nAction Input: {\"movie_id\": 7", "not valid JSON"),
])
def test_parser_names_what_is_malformed(text, error):
    step = parse_step(text)
    assert step.error and error in step.error and step.action_input is None


def test_parser_reads_a_turn_and_ignores_a_made_up_observation():
    step = parse_step("Thought: find it\nAction: `get_movie_for_film_db`\nAction Input: ```json\n{\"movie_id\": 7}\n```"
                      "\nObservation: {\"title\": \"invented\"}\nAction: Finish\nAction Input: {}")
    assert step == Step("find it", NAME, {"movie_id": 7})


def test_simulator_gives_the_specific_error():
    sim = RulesSimulator(TOOLS)
    unknown = act(parse_step('Action: get_film\nAction Input: {"movie_id": 7}'), [NAME], sim)
    assert unknown.kind == "unknown_api" and "no such function: 'get_film'" in unknown.observation
    listed_but_unknown = act(parse_step('Action: other\nAction Input: {}'), [NAME, "other"], sim)
    assert listed_but_unknown.kind == "unknown_api"
    bad_json = act(parse_step("Action: get_movie_for_film_db\nAction Input: {'movie_id': 7}"), [NAME], sim)
    assert bad_json.kind == "bad_format" and "not valid JSON" in bad_json.observation
    cases = {json.dumps({}): "missing required parameter(s): movie_id",
             json.dumps({"movie_id": "7"}): "'movie_id' must be of type NUMBER, got str",
             json.dumps({"movie_id": True}): "'movie_id' must be of type NUMBER, got bool",
             json.dumps({"movie_id": 7, "adult": "no"}): "'adult' must be of type BOOLEAN",
             json.dumps({"movie_id": 7, "day": "May 1"}): "'day' must be of type DATE (YYYY-MM-DD)"}
    for args, error in cases.items():
        out = act(parse_step(f"Action: {NAME}\nAction Input: {args}"), [NAME], sim)
        assert out.kind == "failed" and error in json.loads(out.observation)["error"], args
    finish = act(parse_step('Action: Finish\nAction Input: {"answer": "x"}'), [NAME], sim)
    assert finish.kind == "failed" and "final_answer" in finish.observation


def test_simulator_answers_a_valid_call_in_the_template_shape():
    sim = RulesSimulator(TOOLS)
    out = sim.call(NAME, {"movie_id": 7, "lang": "en"})
    assert out.kind == "success" and json.loads(out.observation)["error"] == ""
    r = out.response
    assert set(r) == {"title", "year", "cast"} and isinstance(r["year"], int) and isinstance(r["title"], str)
    assert len(r["cast"]) == 2 and set(r["cast"][0]) == {"name"}  # lists cut to 2 items (Table 17's rule)
    assert sim.call(NAME, {"movie_id": 7, "lang": "en"}) == out  # deterministic
    assert sim.call(NAME, {"movie_id": 8}).response != r


def _turn(text, sim):
    step = parse_step(text)
    return Turn(text, step, act(step, [NAME], sim))


def test_rewards_of_hand_written_trajectories():
    sim, judge = RulesSimulator(TOOLS), RulesSolutionJudge()
    ok = f'Thought: a\nAction: {NAME}\nAction Input: {{"movie_id": 7}}'
    title = sim.call(NAME, {"movie_id": 7}).response["title"]
    e = Episode("q", [NAME], [NAME])
    e.turns = [_turn("no format at all", sim),                                    # -0.2
               _turn(f"Action: {NAME}\nAction Input: {{}}", sim),                 # -0.1 (missing movie_id)
               _turn(ok, sim),                                                    # +0.1
               _turn(f'Action: Finish\nAction Input: {{"final_answer": "It is {title}."}}', sim)]  # +0.2
    e.status = judge.status("q", e)
    assert e.status == "Solved" and e.finished
    assert e.format_reward() == pytest.approx(-0.2) and e.termination_reward() == FINISH_REWARD
    assert e.reward() == pytest.approx(-0.2 + 0.2 + 1.0)

    ungrounded = Episode("q", [NAME], [NAME], turns=[_turn(ok, sim), _turn(
        'Action: Finish\nAction Input: {"final_answer": "Some movie I remember."}', sim)])
    ungrounded.status = judge.status("q", ungrounded)
    assert ungrounded.status == "Partially Solved" and ungrounded.reward() == pytest.approx(0.1 + 0.2 + 0.5)

    stuck = Episode("q", [NAME], [NAME], turns=[_turn(ok, sim)] * 5)  # never finishes: the 5-turn limit
    stuck.status = judge.status("q", stuck)
    assert stuck.status == "Unsolved" and stuck.termination_reward() == TURN_LIMIT_PENALTY
    assert stuck.reward() == pytest.approx(5 * 0.1 - 0.5)

    made_up = Episode("q", [NAME], [NAME], turns=[_turn('Action: Finish\nAction Input: {"final_answer": "42"}', sim)])
    made_up.status = judge.status("q", made_up)
    assert made_up.status == "Unsolved" and made_up.reward() == pytest.approx(0.2)  # finished, no call: unsolved

    # rl_finish="grounded": a Finish the judge calls Unsolved is charged like the turn limit; others keep F.3.1's
    assert made_up.termination_reward(grounded=True) == TURN_LIMIT_PENALTY
    assert ungrounded.termination_reward(grounded=True) == e.termination_reward(grounded=True) == FINISH_REWARD
    assert stuck.termination_reward(grounded=True) == TURN_LIMIT_PENALTY


class Scripted:
    """A stand-in for a causal LM's generate(): emits the next scripted turn for every row of the batch."""

    def __init__(self, tok, turns):
        self.tok, self.turns, self.calls = tok, turns, 0

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, **kw):
        import torch
        from transformers.generation.utils import GenerateDecoderOnlyOutput
        text = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        new = self.tok(text, add_special_tokens=False)["input_ids"] + [eos_token_id]
        seq = torch.cat([input_ids, torch.tensor([new] * len(input_ids))], 1)
        scores = tuple(torch.zeros(len(input_ids), len(self.tok)) for _ in new)
        return GenerateDecoderOnlyOutput(sequences=seq, scores=scores)


def test_observations_are_masked_out_of_the_completion(tmp_path):
    """env_mask is 1 exactly on the model's tokens and 0 on the observations the environment inserted."""
    from pastkit.generation import load_model
    from pastkit.models import make_tiny_model

    _, tok = load_model(make_tiny_model(tmp_path / "tiny"))
    turns = ['Thought: a\nAction: get_movie_for_film_db\nAction Input: {"movie_id": 7}',
             'Thought: b\nAction: Finish\nAction Input: {"final_answer": "done"}']
    model = Scripted(tok, turns)
    [e] = run_episodes(model, tok, [Task("which movie?", (NAME,), (NAME,))], RulesSimulator(TOOLS),
                       RulesSolutionJudge(), max_turns=5, max_new_tokens=64, temperature=0)
    assert len(e.turns) == 2 and e.finished and [t.outcome.kind for t in e.turns] == ["success", "finish"]
    assert len(e.completion_ids) == len(e.env_mask) == len(e.logprobs)
    model_part = tok.decode([t for t, m in zip(e.completion_ids, e.env_mask) if m == 1], skip_special_tokens=True)
    env_part = tok.decode([t for t, m in zip(e.completion_ids, e.env_mask) if m == 0])
    assert model_part == turns[0] + turns[1]
    assert "Observation:" in env_part and "Observation:" not in model_part
    assert json.loads(env_part.split("Observation: ")[1].split("<|im_end|>")[0])["error"] == ""
    full = tok.decode(e.prompt_ids + e.completion_ids)  # the whole episode is one well-formed chat
    assert full.count("<|im_start|>assistant") == 2 and full.count("<|im_start|>user") == 2


def _write_queries(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "G1_instruction.json").write_text(json.dumps(rows))


def test_derive_assigns_queries_by_first_api_and_refuses_bad_files(tmp_path):
    other = {**API, "category_name": "Data", "tool_name": "Other", "api_name": "Ping"}
    rows = [{"query": "a", "query_id": 1, "relevant APIs": [["Film DB", "Get Movie"]], "api_list": [API, other]},
            {"query": "b", "query_id": 2, "relevant APIs": [["Other", "Ping"]], "api_list": [other, API]}]
    _write_queries(tmp_path / "q", rows)
    data = derive(tmp_path / "q")
    assert [(q["query_id"], q["category"]) for q in data["queries"]] == [(1, "Movies")]  # "Data" is not in Table 14
    assert data["queries"][0]["apis"] == [NAME, "ping_for_other"] and data["queries"][0]["relevant"] == [NAME]
    (tmp_path / "q" / "G1_instruction.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="G1_instruction.json: expected a JSON array"):
        derive(tmp_path / "q")
    _write_queries(tmp_path / "r", [{"query": "a", "query_id": 1, "api_list": []}])
    with pytest.raises(ValueError, match="G1_instruction.json: query 0 needs"):
        derive(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="no G\\*.json"):
        derive(tmp_path / "empty")


def test_shipped_data_and_params():
    data = load_toolbench("shipped")
    cats = {q["category"] for q in data["queries"]}
    assert cats == set(CATEGORIES) and sum(q["category"] == "Movies" for q in data["queries"]) == 51
    with pytest.raises(ValueError, match="one source category"):
        ToolbenchParams(rounds=2)
    with pytest.raises(ValueError, match="Table 14"):
        ToolbenchParams(target_categories=["Movies"])
    with pytest.raises(ValueError, match="Table 14"):
        ToolbenchParams(target_categories=["Cooking"])
    with pytest.raises(ValueError, match="tool_sft_batching='random'"):
        ToolbenchParams(tool_sft_batching="random")
    with pytest.raises(ValueError, match="rl_finish='solved'"):
        ToolbenchParams(rl_finish="solved")
    p = ToolbenchParams(target_categories=["SMS"], max_queries=2)
    [unit] = Toolbench().target_units(p)
    assert len(unit.data["queries"]) == 2 and set(unit.data["apis"]) == {n for q in unit.data["queries"]
                                                                           for n in q["apis"]}
    source = Toolbench().source_rounds(p)[0]
    assert {q["category"] for q in source.data["queries"]} == {"Movies"} and len(source.data["queries"]) == 4
    val = Toolbench().validation(p)  # where settings are chosen: Movies queries RL does not use, fewest APIs
    rl_ids = {q["query_id"] for q in source.data["queries"]}
    assert len(val.data["queries"]) == 2 and not rl_ids & {q["query_id"] for q in val.data["queries"]}
    assert {q["category"] for q in val.data["queries"]} == {"Movies"} and val.name == "Movies (validation)"
    held = [q for q in Toolbench().category_queries(p, "Movies") if q["query_id"] not in rl_ids]
    assert max(len(q["apis"]) for q in val.data["queries"]) <= min(
        len(q["apis"]) for q in held if q not in val.data["queries"])
    gate = Toolbench().gate_unit(SimpleNamespace(p=p), source)  # RL's gate (it reads the engine's params only)
    gate_ids = {q["query_id"] for q in gate.data["queries"]}
    assert len(gate_ids) == p.gate_queries and not gate_ids & rl_ids  # never an RL prompt
    assert {q["category"] for q in gate.data["queries"]} == {"Movies"}  # never a target category's query
    # the source SFT covers the gate's APIs (as SQuAD's covers its held-out questions' passages), not its queries
    assert {n for q in gate.data["queries"] for n in q["apis"]} <= set(source.data["apis"])
    assert set(source.data["apis"]) == {n for q in [*source.data["queries"], *gate.data["queries"]] for n in q["apis"]}
    everything = replace(p, rl_prompts=len(Toolbench().category_queries(p, "Movies")))
    assert Toolbench().gate_unit(SimpleNamespace(p=everything), source) is None


def test_alignment_examples_come_from_schemas_and_make_valid_calls():
    data = load_toolbench("shipped")
    names = sorted(data["tools"])[:12]
    records = alignment_records(data["tools"], names, 0, seed=0)
    queries = {q["query"] for q in data["queries"]}
    sim = RulesSimulator(data["tools"])
    assert len(records) == 2 * len(names)
    for call, finish in zip(records[::2], records[1::2]):
        assert call["prompt"][1]["content"] not in queries  # never a test query
        step = parse_step(call["completion"][0]["content"])
        listed = call["prompt"][0]["content"].split("specific set of APIs: ")[1].split(". You must")[0].split(", ")
        assert act(step, listed, sim).kind == "success", step
        assert parse_step(finish["completion"][0]["content"]).action == "Finish"
    # with recovery: a call without the required parameters or with a wrongly typed one, its error, the valid call
    recovering = alignment_records(data["tools"], names, 0, seed=0, recovery=True)
    extra = [r for r in recovering if r not in records]
    with_required = [n for n in names if data["tools"][n]["required_parameters"]]
    assert len(with_required) < len(extra) <= 2 * len(with_required)
    kinds = []
    for r in extra:
        failed, observation = parse_step(r["prompt"][2]["content"]), r["prompt"][3]["content"]
        kinds.append("missing" if failed.action_input == {} else "type")
        assert ("missing required parameter" if kinds[-1] == "missing" else "must be of type") in observation
        listed = r["prompt"][0]["content"].split("specific set of APIs: ")[1].split(". You must")[0].split(", ")
        retry = parse_step(r["completion"][0]["content"])
        assert retry.action == failed.action and act(retry, listed, sim).kind == "success", retry
    assert kinds.count("missing") == len(with_required) and "type" in kinds


def test_fig3_table_pairs_by_query_and_averages_over_categories():
    rows = []
    for cat, scores in {"A": ([0, 0], [1, 1]), "B": ([1, 0, 0, 0], [1, 0, 0, 0])}.items():
        for method, xs in zip(("Target SFT", "PaST"), scores):
            rows += [{"category": cat, "method": method, "document": f"{cat}{i}", "score": x, "seed": 0}
                     for i, x in enumerate(xs)]
    t = fig3_table(pd.DataFrame(rows)).set_index("category")
    assert t.loc["A", "PaST − Target SFT"] == 100 and t.loc["B", "PaST − Target SFT"] == 0
    avg = t.loc["Average (over categories)"]
    assert avg["Target SFT %"] == 12.5 and avg["PaST %"] == 62.5 and avg["PaST − Target SFT"] == 50
    assert "random %" not in t  # no random control in the answers, no column for it


def test_fig3_random_control_is_compared_with_target_sft_like_past():
    rows = []
    for cat, scores in {"A": ([0, 0, 1], [1, 1, 1], [0, 1, 1]), "B": ([1, 0, 0], [1, 0, 0], [0, 0, 0])}.items():
        for method, xs in zip(("Target SFT", "PaST", RANDOM_CONTROL), scores):
            rows += [{"category": cat, "method": method, "document": f"{cat}{i}", "score": x, "seed": 0}
                     for i, x in enumerate(xs)]
    t = fig3_table(pd.DataFrame(rows))
    by = t.set_index("category")
    assert by.loc["A", "random − Target SFT"] == pytest.approx(33.3) and by.loc["B", "random − Target SFT"] == \
        pytest.approx(-33.3)
    assert by.loc["A", "PaST − Target SFT"] == pytest.approx(66.7)  # PaST's columns untouched by the third method
    avg = by.loc["Average (over categories)"]
    assert avg["random %"] == pytest.approx(100 * (2 / 3 + 0) / 2, abs=0.1) and avg["random − Target SFT"] == 0
    assert avg["random diff low"] < 0 < avg["random diff high"] and avg["random mde"] > 0
    md = markdown_fig3(t, "caption")
    assert "random − Target SFT [95% CI]" in md and RANDOM_CONTROL in md
    fig = plot_fig3(t, "caption")
    assert len(fig.axes[0].patches) == 3 * len(t)  # a bar per method and row


def test_paired_runs_compares_the_two_models_run_for_run():
    call = "[turn 1] Thought: t\nAction: f\nAction Input: {}\nObservation (success): {}"
    other_thought = call.replace("Thought: t", "Thought: u")  # same actions, other text
    other_call = call.replace("Action: f", "Action: g")
    runs = {  # item: (Target SFT's trajectory, status, score), (PaST's ...)
        "q1:0": ((call, "Solved", 1.0), (call, "Solved", 1.0)),
        "q1:1": ((call, "Solved", 1.0), (other_thought, "Solved", 1.0)),
        "q2:0": ((call, "Solved", 1.0), (other_call, "Unsolved", 0.0)),
        "q2:1": ((call, "Unsolved", 0.0), (other_call, "Partially Solved", 0.5)),
    }
    answers = pd.DataFrame([{"seed": 0, "category": "A" if item.startswith("q1") else "B", "item": item,
                             "method": method, "trajectory": traj, "status": status, "score": score}
                            for item, pair in runs.items()
                            for method, (traj, status, score) in zip(("Target SFT", "PaST"), pair)])
    t = paired_runs(answers).set_index("category")
    assert t.loc["A"].to_dict() == {"runs": 2, "same actions": 2, "identical text": 1, "same outcome": 2,
                                    "PaST higher": 0, "PaST lower": 0}
    assert t.loc["B"].to_dict() == {"runs": 2, "same actions": 0, "identical text": 0, "same outcome": 0,
                                    "PaST higher": 1, "PaST lower": 1}
    assert t.loc["all", "runs"] == 4 and t.loc["all", "same actions"] == 2
    with pytest.raises(ValueError, match="no PaST run"):
        paired_runs(answers[~((answers.method == "PaST") & (answers["item"] == "q2:1"))])


def test_outcome_kinds_cover_the_reward_table():
    from pastkit.benchmarks.toolbench.agent import TURN_REWARD
    assert set(TURN_REWARD) | {"finish"} == {"success", "failed", "bad_format", "unknown_api", "finish"}
    assert Outcome("finish", "").kind == "finish"


class Endpoint:
    """A stand-in for the cached LLM endpoint: a fixed reply, and a record of what was asked."""

    def __init__(self, reply):
        self.reply, self.asked = reply, []

    def ask(self, system, user, max_tokens):
        self.asked.append(user)
        return self.reply

    def describe(self):
        return {"model": "stub"}


def test_llm_simulator_and_solution_judge_read_their_replies():
    from pastkit.benchmarks.toolbench.agent import LLMSimulator, LLMSolutionJudge
    from pastkit.judges import JudgeError

    sim = LLMSimulator(TOOLS, endpoint=Endpoint('{"error": "", "response": {"title": "Heat"}}'))
    assert sim.call(NAME, {"movie_id": 7}).response == {"title": "Heat"}
    assert '"movie_id": 7' in sim.endpoint.asked[0] and "API Documentation:" in sim.endpoint.asked[0]
    assert sim.call(NAME, {}).kind == "failed" and len(sim.endpoint.asked) == 1  # schema checked before asking
    refused = LLMSimulator(TOOLS, endpoint=Endpoint('{"error": "movie_id out of range", "response": null}'))
    assert json.loads(refused.call(NAME, {"movie_id": 7}).observation)["error"] == "movie_id out of range"
    with pytest.raises(JudgeError, match="simulator replied"):
        LLMSimulator(TOOLS, endpoint=Endpoint("Sure! Here is the response")).call(NAME, {"movie_id": 7})
    e = Episode("q", [NAME], [NAME])
    judge = LLMSolutionJudge(endpoint=Endpoint('{"reason": "half", "answer_status": "Partially Solved"}'))
    assert judge.status("q", e) == "Partially Solved" and "<Target_Query> q </Target_Query>" in judge.endpoint.asked[0]
    with pytest.raises(JudgeError, match="no answer_status"):
        LLMSolutionJudge(endpoint=Endpoint("Solved!")).status("q", e)


def test_an_episode_cut_at_the_turn_limit_ends_with_the_model_s_tokens(tmp_path):
    from pastkit.generation import load_model
    from pastkit.models import make_tiny_model

    _, tok = load_model(make_tiny_model(tmp_path / "tiny"))
    model = Scripted(tok, ['Thought: a\nAction: get_movie_for_film_db\nAction Input: {"movie_id": 7}'])
    [e] = run_episodes(model, tok, [Task("which movie?", (NAME,), (NAME,))], RulesSimulator(TOOLS),
                       RulesSolutionJudge(), max_turns=2, max_new_tokens=64, temperature=0)
    assert len(e.turns) == 2 and not e.finished and e.termination_reward() == TURN_LIMIT_PENALTY
    assert e.env_mask[-1] == 1 and e.env_mask.count(0) > 0  # one observation between the turns, none after


def test_endpoint_cache_skips_and_reports_a_damaged_line(tmp_path, monkeypatch):
    from pastkit.benchmarks.toolbench.agent import CachedEndpoint

    monkeypatch.setenv("PASTKIT_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("PASTKIT_JUDGE_MODEL", "m")
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    path = tmp_path / "judge-cache" / "m.simulator.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"key": "a", "reply": "{}"}\n{"key": "b", "rep\n')
    seen = []
    endpoint = CachedEndpoint("simulator", log=seen.append)
    assert endpoint.cache == {"a": "{}"} and len(seen) == 1 and "line 2 is damaged" in seen[0]


def test_cpu_bf16_trains_in_bf16_but_models_are_scored_in_fp32(tmp_path, monkeypatch):
    """bf16 rounds most of a small v away in a matmul (README), so episodes and recall run without autocast."""
    import pastkit.decoding
    import pastkit.generation
    import pastkit.training
    from pastkit.benchmarks.toolbench.fig3 import recall_rows
    from pastkit.generation import load_model
    from pastkit.past import Engine

    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    asked = []
    real = pastkit.training.autocast

    def recording(cpu_bf16):
        asked.append(cpu_bf16)
        return real(cpu_bf16)

    monkeypatch.setattr(pastkit.training, "autocast", recording)
    monkeypatch.setattr(pastkit.generation, "autocast", recording)
    decoder_init = pastkit.decoding.Decoder.__init__  # episodes decode through the kit's decoder

    def decoder(self, model, cpu_bf16=False):
        asked.append(cpu_bf16)
        decoder_init(self, model, cpu_bf16)

    monkeypatch.setattr(pastkit.decoding.Decoder, "__init__", decoder)
    p = ToolbenchParams(model="tiny-random", max_queries=1, eval_runs=1, max_turns=1, rl_max_new_tokens=4)
    assert p.cpu_bf16  # ToolBench's cpu default
    bench = Toolbench()
    engine = Engine(bench, p, 0, log=lambda *_: None)
    unit = bench.target_units(p)[0]
    answers = bench.score(engine, engine.base_model(), unit, "target")
    recall_rows(bench.data(p)["tools"], unit.data["apis"], load_model(engine.base))
    assert len(answers) == 1 and asked and not any(asked)


def test_multi_turn_grpo_rolls_out_a_steps_prompts_together_and_trains_them_a_group_at_a_time(tmp_path, monkeypatch):
    """Batched multi-turn steps: every episode of an optimizer step is played in one rollout call, while the
    backward pass takes one prompt's group at a time (4 x 4 ToolBench episodes in one pass ran out of 24 GB)."""
    from pastkit.past import Engine
    from pastkit.skill_rl import GRPOSpec, train_grpo

    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    p = ToolbenchParams(model="tiny-random", rl_prompts=4, rl_group=2, max_turns=1, rl_max_new_tokens=4)
    bench = Toolbench()
    engine = Engine(bench, p, 0, log=lambda *_: None)
    task = bench.rl_task(engine, bench.source_rounds(p)[0])
    played, rollout = [], task.rollout_func

    def recording(prompts, trainer):
        played.append(len(prompts))
        assert trainer.args.per_device_train_batch_size == 2 and trainer.args.gradient_accumulation_steps == 2
        return rollout(prompts, trainer)

    task.rollout_func = recording
    spec = GRPOSpec(epochs=1, lr=1e-3, group=2, prompts_per_step=2, beta=0.0, temperature=1.0, top_p=1.0, top_k=0,
                    max_new_tokens=4)
    summary = train_grpo(engine.base, task, tmp_path / "rl", spec, seed=0, log=lambda *_: None)
    assert summary["steps"] == 2 and played == [4, 4]  # two steps, each one rollout of 2 prompts x 2 episodes


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_episodes_through_the_decoder_are_hf_generates(tmp_path, monkeypatch, temperature):
    """The same episodes, token for token and draw for draw, whether turns decode through the kit's decoder (each
    episode's cache kept between turns) or through HF `generate` with `stop_strings`."""
    import torch

    import pastkit.decoding
    from pastkit.generation import load_model
    from pastkit.models import make_tiny_model

    model, tok = load_model(make_tiny_model(tmp_path / "tiny"))
    tasks = [Task(q, (NAME,), (NAME,)) for q in ("which movie?", "the film with id 7, please") for _ in range(2)]
    played = {}
    for path in ("decoder", "hf"):
        if path == "hf":
            monkeypatch.setattr(pastkit.decoding, "supports", lambda m: False)
        torch.manual_seed(3)
        played[path] = run_episodes(model, tok, tasks, RulesSimulator(TOOLS), RulesSolutionJudge(), max_turns=3,
                                    max_new_tokens=12, temperature=temperature, top_p=0.9, top_k=20, batch_size=3)
    for a, b in zip(played["decoder"], played["hf"]):
        assert len(a.turns) == 3 and a.env_mask.count(0) > 0  # observations were read from the cache
        assert (a.prompt_ids, a.completion_ids, a.env_mask) == (b.prompt_ids, b.completion_ids, b.env_mask)
        assert [t.text for t in a.turns] == [t.text for t in b.turns]
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
