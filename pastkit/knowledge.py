"""Knowledge injection by SFT (paper Sec. 4.2 Stage I/II; SEAL protocol, Appendix D.2, Table 8).

`train_sft` fine-tunes a model on a list of records in any of trl's three dataset formats: plain text
(`{"text"}`, language modelling on the whole document), prompt-completion (`{"prompt", "completion"}`,
loss on the completion) or chat (`{"messages"}`). Full fine-tuning saves a model dir; LoRA (spec.lora_r)
saves a peft adapter dir, which every parameter-space tool in pastkit accepts. The loss curve and whether
it fell go to out/train_log.json and out/summary.json: an SFT whose loss did not fall is flagged.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .console import say
from .outputs import atomic_output
from .training import curve, device_args, falling, interactive, memory_callbacks, progress_callback, quiet_trainer

# LoRA targets: all attention and MLP projections (kit choice; the paper defers to SEAL's list).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FORMATS = ({"text"}, {"prompt", "completion"}, {"messages"})
BATCHINGS = ("sorted", "megabatches")


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
    schedule: str = "linear"  # transformers' lr_scheduler_type (paper Table 13: cosine for LooGLE's SFT)
    batching: str = "sorted"  # "sorted": `LengthBatches`; "megabatches": transformers' `group_by_length`
    cpu_bf16: bool = False  # bf16 autocast on a CPU (`training.device_args`)

    def __post_init__(self):
        if self.batching not in BATCHINGS:
            raise ValueError(f"SFT batching={self.batching!r}: one of {BATCHINGS}")


def record_format(records: list[dict]) -> set[str]:
    """The dataset format of `records` (one of FORMATS), or a ValueError saying what is wrong."""
    if not records:
        raise ValueError("SFT needs at least one record")
    keys = set(records[0])
    if keys not in FORMATS or any(set(r) != keys for r in records):
        raise ValueError(f"SFT records must all have the keys of one format {[sorted(f) for f in FORMATS]}; "
                         f"the first has {sorted(keys)}")
    return keys


class LengthBatches:
    """Batches of records of similar length, in a random order: little padding, the same records per epoch.

    transformers' `group_by_length` sorts only within "megabatches" of at most a quarter of the data, and for the
    few dozen records of a knowledge SFT here a megabatch is a single batch: batches were random, and a short
    sentence padded to a passage's length. Padding was 3.5x the real tokens on six SQuAD passages with their
    sentences (README, Performance). This sampler sorts the whole set by length (random tie-break), cuts it into
    batches and shuffles their order each epoch (seeded); every record is seen once per epoch, the longest
    left-over records last in a short batch.
    """

    def __init__(self, lengths: list[int], batch: int, seed: int):
        self.lengths, self.batch, self.seed, self.epoch = list(lengths), batch, seed, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        tie = torch.rand(len(self.lengths), generator=g).tolist()
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], tie[i]))
        full = len(order) // self.batch * self.batch  # the DataLoader cuts the stream every `batch` indices,
        batches = [order[i:i + self.batch] for i in range(0, full, self.batch)]  # so a short batch goes last
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield from batches[b]
        yield from order[full:]


def _sft_trainer():
    """trl's SFTTrainer with the model's own cross-entropy loss and, for batching "sorted", `LengthBatches`.

    The fused head computes log-probs, entropy and top-1 accuracy in Python-level tiles on CPU (Triton only on
    CUDA/XPU); the loss is the same, but a step took about 1.5x as long here (bench/throughput.py, README).
    trl documents overriding `compute_loss` as the way to change the loss.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class KitSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy == "group_by_length":  # batching "megabatches"
                return super()._get_train_sampler(train_dataset)
            data = train_dataset if train_dataset is not None else self.train_dataset
            return LengthBatches([len(ids) for ids in data["input_ids"]], self.args.train_batch_size,
                                 self.args.seed)

    return KitSFTTrainer


def train_sft(start_dir, records: list[dict], out: Path, spec: SFTSpec, seed: int, log=say,
              force: bool = False) -> dict:
    """Fine-tune `start_dir` on `records` and save to `out`; returns the summary (loss start/end, fell?).

    `out` follows the kit's write rules (`outputs`): never the start model or inside it, an existing `out` only
    with force and only if pastkit wrote it, written whole or not at all."""
    keys = record_format(records)
    with atomic_output(out, force, inputs=[start_dir]) as tmp:
        return _train_sft(start_dir, records, keys, Path(tmp), spec, seed, log)


def _train_sft(start_dir, records: list[dict], keys: set[str], out: Path, spec: SFTSpec, seed: int, log) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    tok = AutoTokenizer.from_pretrained(start_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(start_dir, use_safetensors=True, trust_remote_code=False)
    peft_config = None
    if spec.lora_r:
        from peft import LoraConfig
        peft_config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=str(out / "_trainer"), num_train_epochs=spec.epochs, learning_rate=spec.lr,
                     per_device_train_batch_size=spec.batch, gradient_accumulation_steps=spec.grad_accum,
                     lr_scheduler_type=spec.schedule, max_length=spec.max_len, packing=False, seed=seed,
                     save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=not interactive(),
                     **device_args(spec.cpu_bf16),
                     **({"train_sampling_strategy": "group_by_length"} if spec.batching == "megabatches" else {}),
                     **({"dataset_text_field": "text"} if keys == {"text"} else {}))
    data = Dataset.from_list(records)
    callbacks = [progress_callback("sft", ("loss",), log), *memory_callbacks()]
    trainer = _sft_trainer()(model=model, args=args, train_dataset=data, processing_class=tok,
                                    peft_config=peft_config, callbacks=callbacks)
    quiet_trainer(trainer)
    kept = len(trainer.train_dataset)  # trl drops records whose completion truncation cut away entirely
    if kept == 0:
        raise ValueError(f"SFT: all {len(records)} records are longer than max_len={spec.max_len} tokens before "
                         "their completion starts, so none has a token to learn; raise the max length")
    if kept < len(records):
        log(f"  sft: {len(records) - kept} of {len(records)} records had no completion left within "
            f"max_len={spec.max_len} and were dropped")
    trainer.train()
    trainer.model.save_pretrained(out)
    if peft_config is None:
        tok.save_pretrained(out)
    else:  # record the base by absolute path so the adapter resolves wherever it is opened from
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(Path(start_dir).resolve())
        cfg_path.write_text(json.dumps(cfg, indent=2))
    losses = curve(trainer.state.log_history, "loss")
    summary = {"records": len(records), "records_trained": kept, "format": sorted(keys), "spec": asdict(spec),
               "steps": trainer.state.max_steps,
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "loss_fell": falling(losses)}
    (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    return summary
