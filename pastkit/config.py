"""Typed run parameters: a shared base (`PastParams`) and one subclass per benchmark, in that benchmark's file.

A notebook's `parameters` cell holds plain literals (the cpu profile's values, which are the defaults);
papermill overrides them (`-p rounds 2`, or `-f params/smoke.yaml`); the next cell calls
`driver.collect("<notebook>", globals())`, which refuses wrong types and bad values and opens every input file,
so nothing trains before the whole configuration is known to be good. Profiles in params/ hold only the
values that differ from the defaults. Every default's origin (paper section/table, or a CPU-scale choice) is
in its comment.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
SAFE_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# 0 means "off" for these; every other integer parameter is a count >= 1
NON_NEGATIVE_INTS = {"rl_top_k", "rl_save_every", "rl_lora_r"}
JUDGES = ("token_f1", "llm")
SCHEDULES = ("linear", "cosine", "constant")  # learning-rate schedules (transformers' lr_scheduler_type)


@dataclass(frozen=True)
class PastParams:
    """What every PaST study shares: model, seeds, Algorithm 1, λ, the judge, GRPO. Defaults are the cpu profile."""

    non_negative: typing.ClassVar[set] = set()  # a benchmark's integer parameters for which 0 is meaningful

    profile: str = "cpu"                        # label recorded with every result; names the results folder
    results_dir: str = ""                       # empty: results/<profile>-<hash of the params>; make figures: figures
    model: str = "smollm2-135m-instruct"        # embedded name, "tiny-random", a local HF dir, or a hub id
    seeds: list = field(default_factory=lambda: [0])  # every stage is repeated per seed; tables show each seed
    rounds: int = 2                             # K source-distillation rounds (Algorithm 1; paper: 2)
    lam: float = 1.0                            # λ in θ_T + λ·v (paper Sec. 4.2: 1.0)
    judge: str = "token_f1"                     # "token_f1" (deterministic) or "llm" (endpoint from the environment)
    rl_prompts: int = 24                        # source questions used for GRPO per round (paper: all, 15 epochs)
    rl_epochs: int = 1                          # passes over those questions (paper Table 9: 15)
    rl_group: int = 4                           # completions per prompt (paper Table 9: 5)
    rl_prompts_per_step: int = 1                # prompts per optimizer step (paper Table 9: batch 32)
    rl_lr: float = 2e-5                         # GRPO actor LR (paper Table 9: 1e-6; ~24 steps here, not thousands)
    rl_beta: float = 0.001                      # KL coefficient, k3 "low-var" estimator (paper Table 9)
    rl_temperature: float = 0.7                 # rollout sampling (paper Table 9)
    rl_top_p: float = 0.9                       # (paper Table 9)
    rl_top_k: int = 50                          # (paper Table 9)
    rl_max_new_tokens: int = 32                 # rollout length (paper Table 9: 512)
    rl_save_every: int = 0                      # keep a GRPO checkpoint every N steps for selection (0: final only)
    rl_lora_r: int = 0                          # GRPO through LoRA of this rank, merged after (0: full parameters)
    rl_schedule: str = "linear"                 # GRPO LR schedule (paper Tables 13, 19: constant; Table 9: not said)
    use_vllm: bool = False                      # vLLM rollouts/generation; needs a GPU and the [gpu] extra
    cpu_bf16: bool = False                      # bf16 autocast in training on a CPU; scoring stays fp32 (GPU: bf16)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, want = getattr(self, f.name), hints[f.name]
            want = {typing.Any: object}.get(want, want)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise TypeError(f"parameter {f.name}={value!r}: expected {want.__name__}, got {type(value).__name__}")
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"parameter {f.name}={value}: must be a finite number")
            least = 0 if f.name in NON_NEGATIVE_INTS | self.non_negative else 1
            if want is int and value < least:
                raise ValueError(f"parameter {f.name}={value}: must be >= {least}")
            if f.name.endswith("_lr") and value <= 0:
                raise ValueError(f"parameter {f.name}={value}: learning rates must be > 0")
        checks = [(SAFE_LABEL.fullmatch(self.profile), f"profile={self.profile!r}: a plain name (letters, digits, "
                   "'_', '-', '.'; no path), since it names a results folder"),
                  (self.model.strip(), "model must not be empty"),
                  (self.seeds != [] and all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds)
                   and len(set(self.seeds)) == len(self.seeds), f"seeds={self.seeds!r}: distinct integers"),
                  (self.judge in JUDGES, f"judge must be one of {JUDGES}"),
                  (self.rl_schedule in SCHEDULES, f"rl_schedule must be one of {SCHEDULES}"),
                  (not (self.rl_lora_r and self.rl_save_every), "rl_lora_r with rl_save_every: LoRA GRPO keeps "
                   "only its final policy; set one of them to 0"),
                  (self.rl_group >= 2, "rl_group must be >= 2 (GRPO needs a group to compare)"),
                  (self.rl_beta >= 0, "rl_beta must be >= 0"), (self.rl_temperature > 0, "rl_temperature must be > 0"),
                  (0 < self.rl_top_p <= 1, "rl_top_p must be in (0, 1]")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def check_inputs(self) -> None:
        """Open and validate every input file the run will read (benchmarks add theirs)."""

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_profile(cls, values: dict):
        """From a profile's values, taking the keys this benchmark declares (a profile serves every notebook;
        the driver refuses a key that no notebook declares)."""
        return cls(**{k: v for k, v in values.items() if k in cls.names()})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    UNHASHED: typing.ClassVar[frozenset] = frozenset({"results_dir"})  # parameters that change no result

    def digest(self) -> str:
        """A short hash of every parameter that can change a result (not `UNHASHED`): names the results folder of
        this configuration."""
        values = {k: v for k, v in self.as_dict().items() if k not in self.UNHASHED}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]

    def caption(self) -> str:
        """What produced a result, in words: printed under every table and figure."""
        seeds = ", ".join(map(str, self.seeds))
        return (f"{self.model} · λ = {self.lam:g} · {self.rounds} round{'s' * (self.rounds > 1)} · "
                f"seed{'s' * (len(self.seeds) > 1)} {seeds} · judge {self.judge} · profile {self.profile}"
                f"{' · bf16 training' * self.cpu_bf16}")


_FIELD_LINE = re.compile(r"^    (\w+): ([\w\[\], |]+?) = .+?(?:\s+# (.*))?$")


def parameters_cell(cls) -> str:
    """A notebook's `parameters` cell for a parameters class: every field as `name: type = default  # comment`,
    typed so that `papermill --help-notebook` describes it, with the comment the dataclass gives it. The defaults
    are stated once, in the dataclass; the notebooks' cells are written from it (`python -m pastkit.driver
    --write-parameters`) and a test holds them equal."""
    said = {}
    for klass in reversed(cls.__mro__):  # a subclass's own definition of a field wins
        if dataclasses.is_dataclass(klass):
            for line in inspect.getsource(klass).splitlines():
                m = _FIELD_LINE.match(line)
                if m and m.group(1) in cls.names():
                    said[m.group(1)] = (m.group(2), m.group(3))
    defaults, lines = cls(), []
    for f in dataclasses.fields(cls):
        kind, comment = said[f.name]
        value = getattr(defaults, f.name)
        literal = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
        lines.append(f"{f.name}: {kind} = {literal}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def injected_names(namespace: dict) -> list[str]:
    """The names papermill's injected-parameters cell assigned: the cells of this kernel's history (IPython's `In`)
    that begin with papermill's "# Parameters" comment. Empty outside IPython."""
    names = []
    for source in namespace.get("In") or []:
        if isinstance(source, str) and source.startswith("# Parameters\n"):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            names += [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                      if isinstance(t, ast.Name)]
    return names


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that also reads 5e-5 as a number: YAML 1.1 wants a dot (5.0e-5) and reads 5e-5 as a
    string, which a float parameter would then refuse."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(text: str):
    """A profile's or a command-line value's YAML, safely loaded (no Python objects), 5e-5 a number."""
    return yaml.load(text, Loader=_Loader)


def load_profile(profile: str | Path) -> dict:
    """A profile YAML (a name in params/ or a path) as a flat dict of the values it overrides."""
    path = Path(profile)
    if not path.suffix:
        path = PARAMS_DIR / f"{profile}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PARAMS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no params profile {profile!r} (known: {known})")
    try:
        values = read_yaml(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a profile is a mapping of parameter: value")
    return values
