"""Knowledge injection by SFT (paper Sec. 4.2 Stage I/II; SEAL protocol, Appendix D.2, Table 8).

Two regimes: full fine-tuning on many documents at once (continued pretraining, CPT) and a LoRA update
on one passage (single-passage test-time training). Both run trl's SFTTrainer on plain-text documents;
the LoRA regime saves a peft adapter dir, which every parameter-space tool in pastkit accepts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

# LoRA targets: all attention and MLP projections (kit choice; the paper defers to SEAL's list).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class SFTSpec:
    """Hyperparameters of one SFT run (Table 8 gives the paper's)."""

    epochs: int
    lr: float
    batch: int
    grad_accum: int
    max_len: int
    lora_r: int | None = None  # None: full fine-tuning
    lora_alpha: int | None = None


def train_sft(base_dir, texts: list[str], out: Path, spec: SFTSpec, seed: int) -> None:
    """Fine-tune `base_dir` on `texts` (language modelling on each whole document) and save to `out`.

    Full fine-tuning saves a model dir (safetensors + tokenizer); LoRA saves a peft adapter dir whose
    adapter_config points at `base_dir`. The loss curve goes to out/train_log.json.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not texts:
        raise ValueError("SFT needs at least one document")
    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True, trust_remote_code=False)
    peft_config = None
    if spec.lora_r:
        from peft import LoraConfig
        peft_config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=str(out / "_trainer"), num_train_epochs=spec.epochs, learning_rate=spec.lr,
                     per_device_train_batch_size=spec.batch, gradient_accumulation_steps=spec.grad_accum,
                     max_length=spec.max_len, packing=False, dataset_text_field="text", seed=seed,
                     use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                     report_to="none", logging_steps=1, disable_tqdm=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                         processing_class=tok, peft_config=peft_config)
    trainer.train()
    trainer.model.save_pretrained(out)
    if peft_config is None:
        tok.save_pretrained(out)
    else:  # record the base by absolute path so the adapter resolves wherever it is opened from
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
        cfg_path.write_text(json.dumps(cfg, indent=2))
    (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    shutil.rmtree(out / "_trainer", ignore_errors=True)
