"""Closed-book tool use (paper Sec. 3.1, 5.2, Appendix F.3): the agent's ReAct turns, the API simulator that
answers them, the rewards of F.3.1, the solution judge, and the episode loop that GRPO rollouts and the
evaluation share.

The agent sees only API names (Table 16) and must recall each API's parameters from its weights. A turn is
parsed into Thought / Action / Action Input; the simulator checks the call against the API's schema and
answers it. Two simulators: `RulesSimulator` (deterministic, the default: unknown API, missing required
parameter, wrong type each give their own error; a valid call returns a response shaped by the API's
`template_response`) and `LLMSimulator` (Table 17's instructions on an OpenAI-compatible endpoint, cached).
Two solution judges likewise: `RulesSolutionJudge` (grounded in the observations, deterministic) and
`LLMSolutionJudge` (Table 18).

An episode's tokens are kept for GRPO: what the model generated (mask 1) and the observations the
environment inserted (mask 0, trl's `env_mask`), so the loss never trains the model to write observations.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field

# Table 16, verbatim: the agent's system prompt. {api_names} is the comma-separated list of function names.
AGENT_PROMPT = (
    "You are an intelligent agent designed to handle real-time user queries using a variety of tools. First, you "
    "will receive a task description. Then, you will enter a loop of reasoning and acting to complete the task. "
    "At each step, follow this process: 1. **Thought**: Analyze the current status and determine the next logical "
    "step. 2. **Action**: Select the appropriate tool to execute that step and output the function name directly. "
    "3. **Action Input**: Provide the arguments for the tool as a STRICT valid JSON object. Output Format: "
    "Thought: <your reasoning> Action: <function_name> Action Input: <function_arguments_as_a_valid_JSON_object> "
    "After the action is executed, you will receive the result ('Observation: <observation>'). Based on the new "
    "state, continue the loop until the task is complete. Constraints & Rules: 1. **Action Field**: The \"Action\" "
    "output must be the EXACT name of the function. Do NOT include parentheses `()`, words like \"call\" or \"use\", "
    "or any punctuation. 2. **Finishing**: You MUST call the \"Finish\" function to submit your final answer. "
    "Available Tools: 1. **General Tools**: You have been trained on a specific set of APIs: {api_names}. You must "
    "rely on your **internal knowledge** to recall the correct parameter schemas for these tools. 2. **Termination "
    "Tool**: You MUST use the following tool to finish the task. Its definition is provided below: "
    "{finish_schema}")
FINISH_SCHEMA = (
    '{"name": "Finish", "description": "If you believe that you have obtained a result that can answer the task, '
    'please call this function to provide the final answer. Remember: you must ALWAYS call this function at the end '
    'of your attempt, and the only part that will be shown to the user is the final answer, so it should contain '
    'sufficient information.", "parameters": {"properties": {"final_answer": {"type": "string", "description": '
    '"The final answer you want to give the user."}}}, "required": ["final_answer"], "optional": []}')
FINISH = "Finish"
STOP = "Observation:"  # ends an agent turn: what follows is the simulator's

# Table 17, verbatim: the LLM simulator's instructions (the system message); the user message gives the API.
SIMULATOR_PROMPT = (
    "You are an advanced API Simulator and Validator. Your role is to act as a real API server, strictly adhering to "
    "the provided documentation to process requests. ### 1. Input Structure Explanation The user will provide input "
    "in the following specific format: API Documentation: Contains the APIs URL, method, description, and parameter "
    "definitions (required/optional). API Examples: Contains reference calls (Note: This section is truncated to "
    "2048 chars and may be incomplete; use it for style reference but rely on Documentation for logic). API Input: "
    "The specific arguments/payload you need to process. ### 2. Processing Logic 1. **Analyze:** Read the API "
    "Documentation to understand the schema and constraints (types, required fields). 2. **Validate:** Check the "
    "API Input against the API Documentation`. - Are all required_parameters present? - Do the data types match "
    "(e.g., string vs int)? 3. **Execute:** - **If Valid:** Generate a realistic, rich JSON response. - **If "
    "Invalid:** Generate a JSON response where error describes the specific validation failure. ### 3. Output "
    "Format You must output ONLY a valid JSON object. No Markdown code blocks. No conversational text. **JSON "
    "Schema:** { \"error\": \"String describing the error (if any), otherwise empty string\", \"response\": "
    "<The_Simulated_Response_Object_or_Null> } ### 4. Behavior Rules - **Length Constraints:** - Keep the response "
    "**concise and lightweight**. Keep the entire JSON output shorter than 300 words. Do not generate excessively "
    "large payloads. If the API returns a list or array, **limit it to maximum 1-2 items**. - **Source of Truth:** "
    "Do not blindly copy \"API Examples\" if they contradict the \"API Input\". The \"API Input\" is your priority.")

# Table 18, verbatim: the solution judge's prompt.
SOLUTION_JUDGE_PROMPT = (
    "Giving the query and the corresponding execution trajectory (including thoughts, tool calls, and "
    "observations), evaluate the answer_status based on these rules: 1. **Solved**: The tool calls were successful. "
    "The final answer is strictly grounded in the real \"Observation\" data and fully addresses the query. 2. "
    "**Partially Solved**: The model used real \"Observation\" data, but the task is only halfway finished or the "
    "final answer missed some details from the observations. 3. **Unsolved**: - The model fabricated information "
    "not found in the Observations. - The tool calls failed, and the model failed to solve the query or made up a "
    "result. - The answer is incorrect or irrelevant. Output a JSON object with the following fields: - "
    "\"reason\": A very brief explanation (less than 20 words). - \"answer_status\": One of [\"Solved\", "
    "\"Partially Solved\", \"Unsolved\"]. <Target_Query> {query} </Target_Query> <Model_Execution_Trajectory> "
    "{trajectory} </Model_Execution_Trajectory>")

# F.3.1: per-turn rewards by what the turn was, the termination rewards, and the solution reward.
TURN_REWARD = {"success": 0.1, "failed": -0.1, "bad_format": -0.2, "unknown_api": -0.2}
FINISH_REWARD, TURN_LIMIT_PENALTY = 0.2, -0.5
SOLUTION_REWARD = {"Solved": 1.0, "Partially Solved": 0.5, "Unsolved": 0.0}
MAX_TURNS = 5  # F.3.1 / Table 19: maximum simulation turns


def agent_prompt(api_names: list[str]) -> str:
    return AGENT_PROMPT.format(api_names=", ".join(api_names), finish_schema=FINISH_SCHEMA)


# ---------------------------------------------------------------------------------------------------
# API names and schemas
# ---------------------------------------------------------------------------------------------------

def _standardize(s: str) -> str:
    s = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", s.lower())).strip("_")
    return f"get_{s}" if s[:1].isdigit() else s


def function_name(tool: str, api: str) -> str:
    """ToolBench's function name for an API of a tool: `<api>_for_<tool>` in lower snake case, with an `is_`
    prefix on API names that are Python keywords (ToolBench's convention). ToolBench also cuts names to their
    last 64 characters (an OpenAI limit); that makes 6 distinct APIs of the test set collide, so it is not done."""
    name = _standardize(api)
    if name in {"from", "class", "return", "false", "true", "id", "and"}:
        name = f"is_{name}"
    return f"{name}_for_{_standardize(tool)}"


def schema_json(name: str, api: dict) -> str:
    """The API's definition as the model learns and recalls it (F.2 types C and D): name, description, and
    required and optional parameters with their types (and descriptions, where ToolBench has them)."""
    def params(ps):
        return [{k: p[k] for k in ("name", "type", "description") if p.get(k) not in (None, "")} for p in ps]
    return json.dumps({"name": name, "description": api["api_description"] or "",
                       "required_parameters": params(api["required_parameters"]),
                       "optional_parameters": params(api["optional_parameters"])}, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------
# The ReAct turn
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One parsed agent turn. `error` is set when the turn does not follow the ReAct format."""

    thought: str
    action: str
    action_input: dict | None
    error: str | None = None


_FIELD = re.compile(r"^\s*(Thought|Action Input|Action)\s*:", re.MULTILINE)


def parse_step(text: str) -> Step:
    """Thought / Action / Action Input from one turn of model output (anything after a made-up
    'Observation:' is ignored). Action Input must be a JSON object; text after the object is ignored."""
    text = text.split("Observation:")[0]
    parts, last = {}, None
    for m in _FIELD.finditer(text):
        if last:
            parts.setdefault(last[0], text[last[1]:m.start()].strip())
        last = (m.group(1), m.end())
    if last:
        parts.setdefault(last[0], text[last[1]:].strip())
    thought, action = parts.get("Thought", ""), parts.get("Action", "").strip().strip("`\"'")
    if not action:
        return Step(thought, "", None, "no 'Action:' field")
    if "Action Input" not in parts:
        return Step(thought, action, None, "no 'Action Input:' field")
    raw = parts["Action Input"].strip().removeprefix("```json").removeprefix("```").strip()
    try:
        args, _ = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError as e:
        return Step(thought, action, None, f"Action Input is not valid JSON ({e.msg} at char {e.pos})")
    if not isinstance(args, dict):
        return Step(thought, action, None, f"Action Input must be a JSON object, got {type(args).__name__}")
    return Step(thought, action, args)


# ---------------------------------------------------------------------------------------------------
# Simulators
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What one turn did: kind is "success", "failed", "bad_format", "unknown_api" or "finish"."""

    kind: str
    observation: str
    response: object = None


_TYPE_CHECKS = {
    "STRING": lambda v: isinstance(v, str), "ENUM": lambda v: isinstance(v, str),
    "BINARY": lambda v: isinstance(v, str),
    "NUMBER": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "BOOLEAN": lambda v: isinstance(v, bool), "ARRAY": lambda v: isinstance(v, list),
    "OBJECT": lambda v: isinstance(v, dict),
    "DATE (YYYY-MM-DD)": lambda v: isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) is not None,
    "TIME (24-hour HH:MM)": lambda v: isinstance(v, str) and re.fullmatch(r"\d{2}:\d{2}", v) is not None,
}


def type_error(param: dict, value) -> str | None:
    """Why `value` does not fit the parameter's ToolBench type, or None if it does (unknown types accept all)."""
    kind = str(param.get("type", ""))
    kind = kind.upper() if kind.islower() else kind  # ToolBench writes "string" and "STRING"
    check = _TYPE_CHECKS.get(kind)
    if check is None or check(value):
        return None
    return f"parameter '{param['name']}' must be of type {kind}, got {type(value).__name__} {json.dumps(value)[:40]}"


def validate_call(api: dict, args: dict) -> str | None:
    """The schema check both simulators start from: missing required parameters, then wrong types."""
    missing = [p["name"] for p in api["required_parameters"] if p["name"] not in args]
    if missing:
        return f"missing required parameter(s): {', '.join(missing)}"
    for p in api["required_parameters"] + api["optional_parameters"]:
        if p["name"] in args and (err := type_error(p, args[p["name"]])):
            return err
    return None


class RulesSimulator:
    """Deterministic simulator: schema errors by rule, and a valid call answered by filling the API's
    `template_response` (strings echo the call's arguments where a field is named after one, otherwise a
    value derived from the call; numbers likewise), so answers can be grounded in what the API returned."""

    name = "rules"

    def __init__(self, apis: dict[str, dict]):
        self.apis = apis

    def describe(self) -> dict:
        return {"simulator": self.name}

    def call(self, name: str, args: dict) -> Outcome:
        """A call checked against the API's schema first (both simulators), then answered (`answer`)."""
        api = self.apis[name]
        if err := validate_call(api, args):
            return Outcome("failed", json.dumps({"error": err, "response": None}))
        return self.answer(name, api, args)

    def answer(self, name: str, api: dict, args: dict) -> Outcome:
        seed = hashlib.sha256(f"{name}\n{json.dumps(args, sort_keys=True)}".encode()).hexdigest()
        response = _fill(api.get("template_response"), args, seed, name)
        return Outcome("success", json.dumps({"error": "", "response": response}, ensure_ascii=False)[:1500], response)


def _fill(template, args: dict, seed: str, path: str):
    """A response shaped like ToolBench's template_response ("str", "int", nested dicts, lists with
    '_list_length'), at most 2 list items (Table 17's length rule), deterministic in the call."""
    if isinstance(template, dict):
        return {k: _fill(v, args, seed, k) for k, v in template.items() if k != "_list_length"}
    if isinstance(template, list):
        return [_fill(template[0], args, f"{seed}{i}", path) for i in range(2 if template else 0)]
    h = int(hashlib.sha256(f"{seed}{path}".encode()).hexdigest()[:8], 16)
    if template in ("int", "float", "number"):
        return h % 1000 if template == "int" else round((h % 100000) / 100, 2)
    if template == "bool":
        return bool(h % 2)
    if template is None or isinstance(template, str):
        key = path.lower()
        echo = next((str(v) for k, v in args.items() if k.lower() in key or key in k.lower()), None)
        return echo if echo is not None else f"{path}-{h % 100000:05d}"
    return template


class LLMSimulator(RulesSimulator):
    """The paper's simulator: Table 17's instructions with the API's documentation and the call, on an
    OpenAI-compatible endpoint (the LLM judge's environment variables, retries and deadline), cached on disk.
    The schema is still checked by rule first, so a missing parameter is an error however the LLM replies."""

    name = "llm"

    def __init__(self, apis: dict[str, dict], endpoint=None):
        super().__init__(apis)
        self.endpoint = endpoint or CachedEndpoint("simulator")

    def describe(self) -> dict:
        return {"simulator": self.name, **self.endpoint.describe(), "prompt": "paper Table 17"}

    def answer(self, name: str, api: dict, args: dict) -> Outcome:
        doc = {"name": name, "method": api.get("method"), "description": api["api_description"],
               "required_parameters": api["required_parameters"], "optional_parameters": api["optional_parameters"]}
        examples = json.dumps(api.get("template_response"))[:2048]
        user = f"API Documentation: {json.dumps(doc)}\nAPI Examples: {examples}\nAPI Input: {json.dumps(args)}"
        reply = self.endpoint.ask(SIMULATOR_PROMPT, user, max_tokens=512)
        try:
            parsed = json.loads(reply.strip().removeprefix("```json").removesuffix("```").strip())
            err = parsed.get("error") or ""
        except (json.JSONDecodeError, AttributeError):  # the simulator's fault, not the agent's: never a penalty
            from ...judges import JudgeError
            raise JudgeError(f"simulator replied {reply[:120]!r}: not the JSON object Table 17 asks for") from None
        if err:
            return Outcome("failed", json.dumps({"error": str(err), "response": None}))
        return Outcome("success", json.dumps(parsed, ensure_ascii=False)[:1500], parsed.get("response"))


class CachedEndpoint:
    """Free-text replies from the LLM judge's endpoint (same environment variables, redirect refusal, retries
    and deadline), cached on disk by prompt so a rerun asks nothing twice. The key is never written."""

    def __init__(self, purpose: str, log=None):
        from ...judges import LLMJudge, read_cache
        self.client = LLMJudge()
        self.path = self.client.cache_path.with_name(f"{self.client.cache_path.stem}.{purpose}.jsonl")
        self.cache = read_cache(self.path, lambda rec: str(rec["reply"]),
                                log or (lambda msg: warnings.warn(msg, stacklevel=3)))

    def describe(self) -> dict:
        return {"model": self.client.model, "url": self.client.url}

    def ask(self, system: str, user: str, max_tokens: int) -> str:
        key = self.client.cache_key(system, user, str(max_tokens))
        if key not in self.cache:
            from ...judges import append_to_cache
            reply = self.client.ask(user, max_tokens=max_tokens, system=system)
            append_to_cache(self.path, {"key": key, "reply": reply})
            self.cache[key] = reply
        return self.cache[key]


def make_simulator(name: str, apis: dict[str, dict]):
    if name == "rules":
        return RulesSimulator(apis)
    if name == "llm":
        return LLMSimulator(apis)
    raise ValueError(f"unknown simulator {name!r}: 'rules' or 'llm'")


# ---------------------------------------------------------------------------------------------------
# Episodes, rewards, the solution judge
# ---------------------------------------------------------------------------------------------------

@dataclass
class Turn:
    text: str
    step: Step
    outcome: Outcome


@dataclass
class Episode:
    """One query's trajectory, its token ids (prompt, and completion with `env_mask`) and the sampling logprobs."""

    query: str
    api_names: list[str]
    relevant: list[str]
    turns: list[Turn] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    status: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.turns) and self.turns[-1].outcome.kind == "finish"

    @property
    def final_answer(self) -> str:
        return self.turns[-1].step.action_input.get("final_answer", "") if self.finished else ""

    def format_reward(self) -> float:
        """Σ per-turn rewards of F.3.1 over every turn but a successful Finish."""
        return sum(TURN_REWARD[t.outcome.kind] for t in self.turns if t.outcome.kind != "finish")

    def termination_reward(self, grounded: bool = False) -> float:
        """F.3.1: FINISH_REWARD for a Finish, TURN_LIMIT_PENALTY otherwise. `grounded` (the kit's option, not the
        paper's) pays for a Finish only where the judge found something (not Unsolved) and charges any other Finish
        like the turn limit, so that ending an episode early is no longer a reward of its own."""
        if grounded and self.status == "Unsolved":
            return TURN_LIMIT_PENALTY
        return FINISH_REWARD if self.finished else TURN_LIMIT_PENALTY

    def solution_reward(self) -> float:
        return SOLUTION_REWARD[self.status]

    def reward(self) -> float:
        """F.3.1's reward, as evaluation reports it."""
        return self.format_reward() + self.termination_reward() + self.solution_reward()

    def trajectory(self) -> str:
        """The trajectory as the judge and the notebook's viewer read it."""
        lines = []
        for i, t in enumerate(self.turns, 1):
            lines.append(f"[turn {i}] {t.text.split('Observation:')[0].strip()}")
            if t.outcome.kind != "finish":
                lines.append(f"Observation ({t.outcome.kind}): {t.outcome.observation}")
        return "\n".join(lines)


def act(step: Step, api_names: list[str], simulator) -> Outcome:
    """What the environment makes of one parsed turn."""
    if step.error:
        return Outcome("bad_format", json.dumps({"error": f"bad format: {step.error}. Use Thought: ... Action: "
                                                 "<function_name> Action Input: <JSON object>", "response": None}))
    if step.action == FINISH:
        if isinstance(step.action_input.get("final_answer"), str):
            return Outcome("finish", "")
        return Outcome("failed", json.dumps({"error": "Finish needs a string 'final_answer'", "response": None}))
    if step.action not in api_names or step.action not in simulator.apis:
        return Outcome("unknown_api", json.dumps({"error": f"no such function: {step.action!r}. Available: "
                                                  f"{', '.join(api_names)}, Finish", "response": None}))
    return simulator.call(step.action, step.action_input)


def leaves(obj) -> list[str]:
    """Every scalar value in a JSON response, as text (booleans left out)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in leaves(v)]
    return [str(obj)] if obj is not None and not isinstance(obj, bool) else []


class RulesSolutionJudge:
    """Deterministic stand-in for Table 18: Solved = finished, a relevant API (ToolBench's "relevant APIs" of the
    query) answered successfully, and the final answer quotes a value from a successful observation (grounded);
    Partially Solved = finished with a non-empty answer after at least one successful call, not Solved;
    otherwise Unsolved. It cannot judge whether the answer addresses the query; the LLM judge can."""

    name = "grounded"

    def describe(self) -> dict:
        return {"solution_judge": self.name, "rule": "finished + relevant API succeeded + answer quotes an observation"}

    def status(self, query: str, episode: Episode) -> str:
        ok = [t for t in episode.turns if t.outcome.kind == "success"]
        answer = episode.final_answer.lower()
        if not episode.finished or not ok or not answer.strip():
            return "Unsolved"
        values = [v.lower() for t in ok if t.step.action in episode.relevant for v in leaves(t.outcome.response)
                  if len(str(v)) >= 3]
        return "Solved" if any(v in answer for v in values) else "Partially Solved"


class LLMSolutionJudge:
    """Table 18 through the LLM endpoint (cached); the reply's JSON `answer_status` is the verdict."""

    name = "llm"

    def __init__(self, endpoint=None):
        self.endpoint = endpoint or CachedEndpoint("solution-judge")

    def describe(self) -> dict:
        return {"solution_judge": self.name, **self.endpoint.describe(), "prompt": "paper Table 18"}

    def status(self, query: str, episode: Episode) -> str:
        from ...judges import JudgeError
        reply = self.endpoint.ask("", SOLUTION_JUDGE_PROMPT.format(query=query, trajectory=episode.trajectory()),
                                  max_tokens=80)
        m = re.search(r'"answer_status"\s*:\s*"(Solved|Partially Solved|Unsolved)"', reply)
        if not m:
            raise JudgeError(f"solution judge replied {reply[:120]!r}: no answer_status")
        return m.group(1)


def make_solution_judge(name: str):
    if name == "grounded":
        return RulesSolutionJudge()
    if name == "llm":
        return LLMSolutionJudge()
    raise ValueError(f"unknown solution judge {name!r}: 'grounded' or 'llm'")


# ---------------------------------------------------------------------------------------------------
# The episode loop
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One query for the agent: its text, the function names it lists, and ToolBench's relevant APIs."""

    query: str
    api_names: tuple
    relevant: tuple


def task_messages(task: Task) -> list[dict]:
    return [{"role": "system", "content": agent_prompt(list(task.api_names))}, {"role": "user", "content": task.query}]


def observation_piece(tok):
    """A function (observation, model_ended) -> the text the chat template puts between an assistant turn and the
    next one: the end of the assistant message (minus the end token if the model generated it), the user message
    'Observation: ...', and the next assistant header. The template is rendered once, here."""
    if not tok.chat_template:
        return lambda observation, model_ended: f"\nObservation: {observation}\n"
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    head = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    done = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "A"}], tokenize=False)
    nxt = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "A"},
                                          {"role": "user", "content": "\x00"}], tokenize=False,
                                  add_generation_prompt=True)
    end, user = done[len(head) + 1:], nxt[len(done):]
    eos = tok.eos_token or ""

    def piece(observation: str, model_ended: bool) -> str:
        tail = end[len(eos):] if model_ended and eos and end.startswith(eos) else end
        return tail + user.replace("\x00", f"Observation: {observation}")

    return piece


def prompt_ids(tok, task: Task) -> list[int]:
    if tok.chat_template:
        text = tok.apply_chat_template(task_messages(task), tokenize=False, add_generation_prompt=True)
    else:
        text = f"{agent_prompt(list(task.api_names))}\n\n{task.query}\n"
    return tok(text, add_special_tokens=False)["input_ids"]


def run_episodes(model, tok, tasks: list[Task], simulator, judge, max_turns: int, max_new_tokens: int,
                 temperature: float, top_p: float = 1.0, top_k: int = 0, batch_size: int = 16,
                 cpu_bf16: bool = False) -> list[Episode]:
    """Play every task to the end (Finish, or `max_turns` turns), all live episodes one turn at a time in
    batches (bf16 products on a CPU if `cpu_bf16`); each episode keeps its tokens, env_mask and sampling
    logprobs, and is judged at the end.

    A turn ends at EOS or at "Observation:" (the agent's next line would be the simulator's). Models the kit's
    decoder supports (`decoding.supports`) decode through it, each episode keeping its keys and values from one
    turn to the next so that a turn reads only the last turn's end and the observation; others through HF
    `generate` with `stop_strings`, which reads every episode's whole context again each turn."""
    from ...decoding import Decoder, StopStrings, supports

    episodes = [Episode(t.query, list(t.api_names), list(t.relevant), prompt_ids=prompt_ids(tok, t)) for t in tasks]
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    decoder = Decoder(model, cpu_bf16) if supports(model) else None
    stop, caches = StopStrings(tok, [STOP]), {}
    observation = observation_piece(tok)
    for turn in range(1, max_turns + 1):
        live = [i for i, e in enumerate(episodes) if not e.finished]
        for b in range(0, len(live), batch_size):
            batch = live[b:b + batch_size]
            ctx = [episodes[i].prompt_ids + episodes[i].completion_ids for i in batch]
            if decoder is not None:
                gens, logps, kept = decoder.extend(ctx, [caches.pop(i, None) for i in batch], max_new_tokens, eos,
                                                   pad, do_sample=temperature > 0, temperature=temperature or 1.0,
                                                   top_p=top_p, top_k=top_k, stop=stop)
                caches.update(zip(batch, kept))
            else:
                gens, logps = _hf_turn(model, tok, ctx, max_new_tokens, temperature, top_p, top_k, cpu_bf16, stop)
            for i, gen, logp in zip(batch, gens, logps):
                e = episodes[i]
                text = tok.decode(gen, skip_special_tokens=True)
                step = parse_step(text)
                outcome = act(step, e.api_names, simulator)
                e.turns.append(Turn(text, step, outcome))
                e.completion_ids += gen
                e.env_mask += [1] * len(gen)
                e.logprobs += [0.0 if x != x else max(x, -1e4) for x in logp]  # NaN 0, -inf a large finite
                if outcome.kind != "finish" and turn < max_turns:  # no observation after the last turn
                    piece = tok(observation(outcome.observation, bool(gen) and gen[-1] == eos),
                                add_special_tokens=False)["input_ids"]
                    e.completion_ids += piece
                    e.env_mask += [0] * len(piece)
                    e.logprobs += [0.0] * len(piece)
                else:
                    caches.pop(i, None)
    for e in episodes:
        e.status = judge.status(e.query, e)
    return episodes


def _hf_turn(model, tok, ctx: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, top_k: int,
             cpu_bf16: bool, stop) -> tuple[list[list[int]], list[list[float]]]:
    """One turn of a batch through HF `generate`: each row's new tokens (to EOS or the stop string, never the
    padding after it, which is EOS for SmolLM2) and their log-probabilities under the distribution they were
    drawn from."""
    import torch

    from ...training import autocast

    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    sample = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None) if temperature > 0 \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    width = max(map(len, ctx))
    ids = torch.tensor([[pad] * (width - len(c)) + c for c in ctx])
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in ctx])
    with torch.no_grad(), autocast(cpu_bf16):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=eos, return_dict_in_generate=True, output_scores=True,
                             stop_strings=[STOP], tokenizer=tok, **sample)
    new = out.sequences[:, width:]
    logps = torch.stack(out.scores, 1).float().log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    gens, probs = [], []
    for j in range(len(ctx)):
        gen = new[j].tolist()
        n = gen.index(eos) + 1 if eos in gen else len(gen)
        n = next((k + 1 for k in range(n) if stop.hit((ctx[j][-stop.width:] + gen[:k + 1])[-stop.width:])), n)
        gens.append(gen[:n])
        probs.append(logps[j, :n].tolist())
    return gens, probs
