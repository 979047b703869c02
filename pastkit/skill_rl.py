"""Skill acquisition by RL: GRPO on closed-book questions, reward = the judge (paper Sec. 4.2, Table 9).

trl's GRPOTrainer does the work. Its KL term with beta > 0 is the k3 estimator, the "low_var_kl" of the
paper's verl setup. Rollouts use vLLM only when asked and available (a GPU and the [gpu] extra).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path


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


def train_grpo(init_dir, prompts: list[str], golds: list[str], questions: list[str], judge, out: Path,
               spec: GRPOSpec, seed: int) -> None:
    """Full-parameter GRPO from `init_dir` on (prompt → gold answer); saves the policy to `out`.

    `prompts` are the user messages (the chat template is applied by trl); the reward of a completion is
    judge.score(question, gold, completion). Per-step rewards go to out/train_log.json.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(init_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(init_dir, use_safetensors=True, trust_remote_code=False)
    conversational = bool(tok.chat_template)
    data = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p}] if conversational else p for p in prompts],
        "gold": golds, "question": questions})

    def judge_reward(prompts, completions, gold, question, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [judge.score(q, g, t) for q, g, t in zip(question, gold, texts)]

    judge_reward.__name__ = f"reward_{judge.name}"
    args = GRPOConfig(output_dir=str(out / "_trainer"), num_train_epochs=spec.epochs, learning_rate=spec.lr,
                      per_device_train_batch_size=spec.group * spec.prompts_per_step,
                      num_generations=spec.group, max_completion_length=spec.max_new_tokens,
                      temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k, beta=spec.beta,
                      use_vllm=spec.use_vllm, seed=seed, use_cpu=not spec.use_vllm, bf16=False,
                      gradient_checkpointing=False, save_strategy="no", report_to="none", logging_steps=1,
                      disable_tqdm=False)
    trainer = GRPOTrainer(model=model, reward_funcs=judge_reward, args=args, train_dataset=data,
                          processing_class=tok)
    trainer.train()
    trainer.model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    shutil.rmtree(out / "_trainer", ignore_errors=True)
