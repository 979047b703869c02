"""Skill acquisition by RL: GRPO on closed-book tasks (paper Sec. 4.2, Table 9), through trl's GRPOTrainer.

An `RLTask` is what a benchmark hands the engine: prompts (user strings or chat messages), extra columns
forwarded to the reward functions, and the reward functions themselves in trl's form
`reward(prompts, completions, **columns) -> list[float | None]`; or, for multi-turn episodes, trl's
`rollout_func` returning token ids, logprobs and an `env_mask` (1 = model token, 0 = environment text kept
out of the loss). trl's KL term with beta > 0 is the k3 estimator, the "low_var_kl" of the paper's verl setup.

The run is read back, not trusted: the reward curve's start and end (with intervals) and whether rewards
ever varied within a group (if never, every advantage is 0 and GRPO learns nothing) go to summary.json.
With `save_every`, intermediate policies are kept under checkpoints/step-N for selection on a validation split.
With `lora_r`, GRPO trains LoRA adapters on every linear layer of the blocks (the policy's own rollouts, through
peft), then merges them: the saved policy is a full model, so the skill vector θ_rl − θ_sft is the adapters'
exact ΔW (up to fp32 rounding of the merge) and everything downstream reads it as any policy; the adapter itself
is kept in adapter/.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .console import say
from .decoding import serve_generate, supports
from .knowledge import LORA_TARGETS
from .outputs import atomic_output
from .training import (
    autocast,
    curve,
    device_args,
    interactive,
    memory_callbacks,
    progress_callback,
    quiet_trainer,
    start_end,
)


@dataclass(frozen=True)
class GRPOSpec:
    """GRPO hyperparameters (Table 9 gives the paper's)."""

    epochs: int
    lr: float
    group: int              # completions per prompt
    prompts_per_step: int
    beta: float             # KL coefficient
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    use_vllm: bool = False
    save_every: int = 0     # keep the policy every N optimizer steps (0: only the final one)
    schedule: str = "linear"  # transformers' lr_scheduler_type (paper Tables 13 and 19: constant)
    cpu_bf16: bool = False  # bf16 autocast on a CPU, training and rollouts (`training.device_args`)
    lora_r: int = 0         # LoRA rank (alpha = 2 r) on every block linear layer, merged after; 0: full parameters


@dataclass
class RLTask:
    """Prompts, the columns reward functions read, and the rewards (or a multi-turn rollout)."""

    prompts: list
    reward_funcs: list[Callable]
    columns: dict[str, list] = field(default_factory=dict)
    rollout_func: Callable | None = None
    describe: dict = field(default_factory=dict)  # what defines the task (prompt template, reward), for stage keys


def rl_split(items: list, seed: int, n: int) -> tuple[list, list]:
    """(the up to `n` items RL trains on, the rest): `items` shuffled by `seed`. The rest is what RL's gate scores,
    so the two are disjoint by construction."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n], items[n:]


def closed_book_task(items: list[dict], prompt: str, judge, seed: int, n: int, **describe) -> RLTask:
    """Closed-book QA as an RL task: up to `n` of `items` ({"question", "answer"}), shuffled by `seed`, asked with
    `prompt` ({question}); the reward is the judge's score of the completion against the answer."""
    items, _ = rl_split(items, seed, n)

    def judge_reward(prompts, completions, gold, question, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [judge.score(q, g, t) for q, g, t in zip(question, gold, texts)]

    judge_reward.__name__ = f"reward_{judge.name}"
    return RLTask([prompt.format(question=i["question"]) for i in items], [judge_reward],
                  {"gold": [i["answer"] for i in items], "question": [i["question"] for i in items]},
                  describe={"prompt": prompt, "reward": judge.describe(), **describe})


def train_grpo(init_dir, task: RLTask, out: Path, spec: GRPOSpec, seed: int, log=say, force: bool = False) -> dict:
    """Full-parameter GRPO from `init_dir` on `task`; saves the policy to `out`, returns the summary.

    `out` follows the kit's write rules (`outputs`), as `train_sft`'s does."""
    with atomic_output(out, force, inputs=[init_dir]) as tmp:
        return _train_grpo(init_dir, task, Path(tmp), spec, seed, log)


def _train_grpo(init_dir, task: RLTask, out: Path, spec: GRPOSpec, seed: int, log) -> dict:
    if len(task.prompts) < spec.prompts_per_step:
        raise ValueError(f"GRPO with {spec.prompts_per_step} prompts a step needs at least that many prompts; the task "
                         f"has {len(task.prompts)}")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(init_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(init_dir, use_safetensors=True, trust_remote_code=False)
    peft_config = None
    if spec.lora_r:  # the kit's decoder reads the base weights only, so LoRA policies roll out through peft
        from peft import LoraConfig
        peft_config = LoraConfig(r=spec.lora_r, lora_alpha=2 * spec.lora_r, lora_dropout=0.0,
                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        if spec.cpu_bf16 and not spec.use_vllm:
            _decode_in_one_autocast(model)
    elif not spec.use_vllm and supports(model):
        serve_generate(model, spec.cpu_bf16)  # rollouts through the kit's decoder (`decoding`)
    elif spec.cpu_bf16 and not spec.use_vllm:
        _decode_in_one_autocast(model)
    conversational = bool(tok.chat_template)
    prompts = [[{"role": "user", "content": p}] if conversational and isinstance(p, str) else p for p in task.prompts]
    data = Dataset.from_dict({"prompt": prompts, **task.columns})
    device = device_args(spec.cpu_bf16) if not spec.use_vllm else {"bf16": device_args().get("bf16", False)}
    # Multi-turn episodes are long (ToolBench: a 500-token agent prompt and every turn): 4 prompts x 4 episodes in
    # one backward pass took 24 GB and was killed. They are rolled out together and trained a group at a time,
    # their gradients accumulated into the same optimizer step.
    micro = task.rollout_func is not None
    args = GRPOConfig(output_dir=str(out / "_trainer"), num_train_epochs=spec.epochs, learning_rate=spec.lr,
                      per_device_train_batch_size=spec.group * (1 if micro else spec.prompts_per_step),
                      gradient_accumulation_steps=spec.prompts_per_step if micro else 1,
                      num_generations=spec.group, max_completion_length=spec.max_new_tokens,
                      temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k, beta=spec.beta,
                      lr_scheduler_type=spec.schedule,
                      use_vllm=spec.use_vllm, seed=seed, save_strategy="no", report_to="none", logging_steps=1,
                      disable_tqdm=not interactive(), **device)

    class KeepCheckpoints(TrainerCallback):
        def on_step_end(self, targs, state, control, model=None, **kw):
            if spec.save_every and state.global_step % spec.save_every == 0:
                model.save_pretrained(out / "checkpoints" / f"step-{state.global_step}")
                tok.save_pretrained(out / "checkpoints" / f"step-{state.global_step}")

    trainer = GRPOTrainer(model=model, reward_funcs=task.reward_funcs, args=args, train_dataset=data,
                          processing_class=tok, rollout_func=task.rollout_func, peft_config=peft_config,
                          callbacks=[progress_callback("grpo", ("reward", "reward_std"), log), KeepCheckpoints(),
                                     *memory_callbacks()])
    quiet_trainer(trainer)
    trainer.train()
    policy = trainer.model
    if spec.lora_r:
        policy.save_pretrained(out / "adapter")
        policy = policy.merge_and_unload()
    policy.save_pretrained(out)
    tok.save_pretrained(out)
    history = trainer.state.log_history
    zero_std = curve(history, "frac_reward_zero_std")
    summary = {"spec": asdict(spec), "steps": trainer.state.max_steps, "reward": start_end(curve(history, "reward")),
               "reward_never_varied": bool(zero_std) and min(zero_std) == 1.0,
               "checkpoints": sorted(p.name for p in (out / "checkpoints").glob("step-*"))}
    (out / "train_log.json").write_text(json.dumps(history, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    return summary


def _decode_in_one_autocast(model) -> None:
    """Make trl's rollouts (`model.generate`) run inside one bf16 autocast region on a CPU.

    Accelerate's mixed precision wraps `forward` in an autocast region of its own, so a rollout re-casts every
    weight to bf16 once per generated token (autocast keeps its casts only until the outermost region ends);
    decoding 4 x 32 tokens then took 4.7 s against 2.8 s in fp32 and 1.8-2.1 s in one region (SmolLM2-135M, one
    thread). Inside one region the weights are cast once per rollout, to the same bf16 values. The weights do not
    change during a rollout, so the cached casts are never stale; the region ends when `generate` returns.
    """
    generate = model.generate

    def generate_in_one_autocast(*args, **kwargs):
        with autocast(True):
            return generate(*args, **kwargs)

    model.generate = generate_in_one_autocast
