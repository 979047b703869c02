"""Chat-formatted batched generation: HF `generate()` on CPU, vLLM where a GPU and the [gpu] extra exist.

Prompts are wrapped in the model's chat template when it has one (SmolLM2-Instruct, Qwen2.5-Instruct),
otherwise used as plain text. vllm is imported only inside `_generate_vllm`, so CPU installs never touch it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .decoding import Decoder, supports
from .training import autocast, interactive


def load_model(path, dtype=torch.float32):
    """Model and tokenizer from a local dir (safetensors only, no remote code); left padding for batching."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    model.eval()
    return model, tok


def chat_text(tok, user: str) -> str:
    """The prompt string the model sees: its chat template with a generation prompt, or the raw text."""
    if tok.chat_template:
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                       add_generation_prompt=True)
    return user


def vllm_available() -> bool:
    import importlib.util
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def generate(model_dir, prompts: list[str], max_new_tokens: int, samples: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, batch_size: int = 64, seed: int = 0, use_vllm: bool = False,
             desc: str = "generate", model_and_tok=None, cpu_bf16: bool = False) -> list[list[str]]:
    """`samples` completions per prompt (greedy when temperature == 0). Returns one list per prompt.

    `cpu_bf16` (bf16 autocast on a CPU) is for text a study trains on; scoring leaves it off (`Engine.answers`).

    On a CPU, decoding a small model is bound by reading the weights once per step at small batches, so larger
    batches cost little more per step (bench/throughput.py): batches hold up to `batch_size` sequences
    (prompts × samples), and prompts are grouped by length so little of each batch is padding. Llama-family
    models decode through `decoding.Decoder` (greedy tokens as HF `generate`'s; each prompt's prefill done once
    for all its samples); others through HF `generate`. `top_k` 0 means no top-k cut.
    """
    if use_vllm:
        if not vllm_available():
            raise RuntimeError("use_vllm=True needs a CUDA GPU and `pip install -e .[gpu]`")
        return _generate_vllm(model_dir, prompts, max_new_tokens, samples, temperature, top_p, top_k, seed)
    model, tok = model_and_tok or load_model(model_dir)
    decoder = Decoder(model, cpu_bf16) if supports(model) else None
    eos = model.generation_config.eos_token_id
    eos = tok.eos_token_id if eos is None else eos
    torch.manual_seed(seed)
    texts = [chat_text(tok, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i], add_special_tokens=False)["input_ids"]))
    per_batch = max(1, batch_size // samples)
    out: dict[int, list[str]] = {}
    for i in tqdm(range(0, len(order), per_batch), desc=desc, unit="batch", leave=False, disable=not interactive()):
        idx = order[i:i + per_batch]
        batch = tok([texts[j] for j in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        if decoder is not None:
            ids = decoder.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens, eos_token_id=eos,
                                   pad_token_id=tok.pad_token_id, do_sample=temperature > 0,
                                   temperature=temperature or 1.0, top_p=top_p, top_k=top_k,
                                   num_return_sequences=samples)
        else:
            kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) \
                if temperature > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.no_grad(), autocast(cpu_bf16):
                ids = model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                     pad_token_id=tok.pad_token_id, **kwargs)
        new = tok.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        out.update((j, new[k * samples:(k + 1) * samples]) for k, j in enumerate(idx))
    return [out[i] for i in range(len(texts))]


def _generate_vllm(model_dir, prompts, max_new_tokens, samples, temperature, top_p, top_k, seed):
    """GPU path (untested on the CPU machines this kit is developed on)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(Path(model_dir)), seed=seed, trust_remote_code=False)
    params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, top_k=top_k or -1,
                            max_tokens=max_new_tokens, seed=seed)
    messages = [[{"role": "user", "content": p}] for p in prompts]
    outs = llm.chat(messages, params)
    return [[c.text for c in o.outputs] for o in outs]
