"""Typed run parameters: one dataclass per experiment, filled from a params/ profile or a notebook.

A notebook's `parameters` cell holds plain literals (the cpu profile's values); papermill overrides them
(`-p rounds 2`, or `-f params/smoke.yaml`); the next cell calls `SquadParams.collect(globals())`, which
refuses wrong types. The driver refuses profile keys no notebook declares. Every default's origin (paper
section/table, or a CPU-scale choice) is in its comment.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"


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
        checks = [(self.rounds >= 1, "rounds must be >= 1"), (self.n_source >= 1, "n_source must be >= 1"),
                  (self.n_target >= 1, "n_target must be >= 1"), (self.seeds != [], "seeds must not be empty"),
                  (set(self.regimes) <= {"cpt", "single"} and self.regimes, "regimes: 'cpt' and/or 'single'"),
                  (self.judge in ("token_f1", "llm"), "judge must be 'token_f1' or 'llm'"),
                  (self.rl_group >= 2, "rl_group must be >= 2 (GRPO needs a group to compare)")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @classmethod
    def collect(cls, namespace: dict) -> SquadParams:
        """Build from a notebook's globals (the parameters cell plus papermill's injected values)."""
        return cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace})

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
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a profile is a mapping of parameter: value")
    return values
