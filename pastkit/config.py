"""Typed run parameters: one dataclass per experiment, filled from a params/ profile or a notebook.

A notebook's `parameters` cell holds plain literals (the cpu profile's values); papermill overrides them
(`-p rounds 2`, or `-f params/smoke.yaml`); the next cell calls `SquadParams.collect(globals())`, which
refuses wrong types. The driver refuses profile keys no notebook declares. Every default's origin (paper
section/table, or a CPU-scale choice) is in its comment.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
SAFE_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Counts that must be at least 1 (sizes, epochs, token budgets); rl_top_k may be 0 (no top-k cut).
POSITIVE = {"rounds", "n_source", "n_target", "n_single", "n_implications", "implication_tokens", "max_seq_len",
            "cpt_epochs", "cpt_batch", "cpt_grad_accum", "lora_r", "lora_alpha", "single_epochs", "rl_prompts",
            "rl_epochs", "rl_group", "rl_prompts_per_step", "rl_max_new_tokens", "eval_max_new_tokens"}


@dataclass(frozen=True)
class SquadParams:
    """PaST on SQuAD (paper Sec. 5.1.1, Appendix D). Defaults are the cpu profile."""

    profile: str = "cpu"                        # label recorded with every result; picks the figures folder
    model: str = "smollm2-135m-instruct"        # embedded name, "tiny-random", a local HF dir, or a hub id
    seeds: list = field(default_factory=lambda: [0])  # every stage is repeated per seed; results pool them
    rounds: int = 2                             # K source-distillation rounds (Algorithm 1; paper: 2)
    n_source: int = 16                          # passages per round (paper 50), disjoint across rounds
    n_target: int = 40                          # target passages for the CPT regime (paper 200 / 2067)
    target_passages: str = "val_seal200"        # shipped split name or a path to passages JSON of your own
    regimes: list = field(default_factory=lambda: ["cpt"])  # "cpt" (n passages, full FT) and/or "single" (LoRA)
    n_single: int = 4                           # passages evaluated one at a time in the single regime (paper 200)
    lam: float = 1.0                            # λ in θ_T + λ·v (paper Sec. 4.2: 1.0)
    judge: str = "token_f1"                     # "token_f1" (deterministic) or "llm" (D.4.3 prompt, endpoint from env)
    n_implications: int = 2                     # self-generated implication samples per passage (paper D.2: 5)
    implication_tokens: int = 160               # max new tokens per implication sample
    max_seq_len: int = 512                      # SFT sequence length in tokens (paper Table 8: 2048)
    cpt_epochs: int = 3                         # CPT full-FT epochs (paper Table 8: 1, on far more data)
    cpt_lr: float = 7e-5                        # CPT learning rate (paper Table 8)
    cpt_batch: int = 4                          # per-device batch (paper Table 8: 4)
    cpt_grad_accum: int = 2                     # gradient accumulation (paper Table 8: 2)
    lora_r: int = 32                            # single-passage LoRA rank (paper Table 8)
    lora_alpha: int = 64                        # LoRA alpha (paper Table 8)
    single_epochs: int = 10                     # single-passage epochs (paper Table 8)
    single_lr: float = 1e-3                     # single-passage learning rate (paper Table 8)
    rl_prompts: int = 64                        # source questions used for GRPO per round (paper: all, 15 epochs)
    rl_epochs: int = 1                          # passes over those questions (paper Table 9: 15)
    rl_group: int = 4                           # completions per prompt (paper Table 9: 5)
    rl_prompts_per_step: int = 1                # prompts per optimizer step (paper Table 9: batch 32)
    rl_lr: float = 1e-5                         # GRPO actor LR (paper Table 9: 1e-6; ~64 steps here, not thousands)
    rl_beta: float = 0.001                      # KL coefficient, k3 "low-var" estimator (paper Table 9)
    rl_temperature: float = 0.7                 # rollout sampling (paper Table 9)
    rl_top_p: float = 0.9                       # (paper Table 9)
    rl_top_k: int = 50                          # (paper Table 9)
    rl_max_new_tokens: int = 32                 # rollout length (paper Table 9: 512)
    eval_max_new_tokens: int = 48               # greedy answer length at evaluation
    use_vllm: bool = False                      # vLLM rollouts/generation; needs a GPU and the [gpu] extra

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, want = getattr(self, f.name), hints[f.name]
            want = {typing.Any: object}.get(want, want)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise TypeError(f"parameter {f.name}={value!r}: expected {want.__name__}, got {type(value).__name__}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"parameter {f.name}={value}: must be a finite number")
            if isinstance(value, int) and not isinstance(value, bool) and f.name in POSITIVE and value < 1:
                raise ValueError(f"parameter {f.name}={value}: must be >= 1")
        checks = [(SAFE_LABEL.fullmatch(self.profile), f"profile={self.profile!r}: a plain name (letters, digits, "
                   "'_', '-', '.'; no path), since it names a results folder"),
                  (self.model.strip(), "model must not be empty"),
                  (self.seeds != [] and all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds),
                   f"seeds={self.seeds!r}: a non-empty list of integers"),
                  (set(self.regimes) <= {"cpt", "single"} and self.regimes, "regimes: 'cpt' and/or 'single'"),
                  (self.judge in ("token_f1", "llm"), "judge must be 'token_f1' or 'llm'"),
                  (self.rl_group >= 2, "rl_group must be >= 2 (GRPO needs a group to compare)"),
                  (min(self.cpt_lr, self.single_lr, self.rl_lr) > 0, "learning rates must be > 0"),
                  (self.rl_beta >= 0, "rl_beta must be >= 0"), (self.rl_temperature > 0, "rl_temperature must be > 0"),
                  (0 < self.rl_top_p <= 1, "rl_top_p must be in (0, 1]"), (self.rl_top_k >= 0, "rl_top_k must be >= 0")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def check_inputs(self) -> None:
        """Every input file the run will read, opened and validated now, before any stage runs."""
        from .squad import load_passages, source_rounds

        source_rounds(self.n_source, self.rounds)
        passages = load_passages(self.target_passages)
        need = max(self.n_target if "cpt" in self.regimes else 0, self.n_single if "single" in self.regimes else 0)
        if len(passages) < need:
            raise ValueError(f"{self.target_passages}: has {len(passages)} passages, but n_target/n_single ask for "
                             f"{need}")

    @classmethod
    def collect(cls, namespace: dict) -> SquadParams:
        """Build from a notebook's globals (the parameters cell plus papermill's injected values), and check
        the input files, so a bad value or file stops the notebook before its first stage."""
        params = cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace})
        params.check_inputs()
        return params

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_profile(profile: str | Path) -> dict:
    """A profile YAML (a name in params/ or a path) as a flat dict of parameter values."""
    path = Path(profile)
    if not path.suffix:
        path = PARAMS_DIR / f"{profile}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PARAMS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no params profile {profile!r} (known: {known})")
    try:
        values = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a profile is a mapping of parameter: value")
    return values
