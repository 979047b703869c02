"""Where the cpu profile's time goes: generation, SFT and one GRPO step on SmolLM2-135M, against baselines.

    .venv/bin/python bench/throughput.py [--quick]      (needs `pip install ctranslate2` for the engine row)

Generation: generated tokens per second (up to EOS, padding not counted) of the kit's path
(`pastkit.generation.generate`, batched) against a bare `model.generate` loop (one prompt at a time) and
against CTranslate2 (an inference engine for CPUs; its per-checkpoint conversion is timed and counted, since
every trained checkpoint would need one). Two workloads from the cpu profile: closed-book answers (greedy,
48 new tokens) and implications (sampling, 2 samples × 160 tokens). SFT: trained tokens per second of the kit's
`train_sft` against a bare PyTorch loop (AdamW, same batches, same number of steps). GRPO: one optimizer step,
split into generation (HF generate inside trl) and the rest (reward, log-probs, backward, optimizer).
Each row is the best of `--repeats` runs on source passages (never the test passages). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pastkit.benchmarks.squad import IMPLICATIONS_PROMPT, QA_PROMPT, cpt_documents, load_passages
from pastkit.generation import chat_text, generate, load_model
from pastkit.knowledge import SFTSpec, train_sft
from pastkit.models import resolve


def count_new_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)  # + the EOS it stopped at


def best(fn, repeats: int):
    """(seconds, result) of the fastest of `repeats` runs."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - t0, out))
    return min(runs, key=lambda r: r[0])


def gen_kit(model_and_tok, prompts, max_new, samples, temperature, batch=64):
    return [c for cs in generate(None, prompts, max_new_tokens=max_new, samples=samples, temperature=temperature,
                                 top_p=0.95 if temperature else 1.0, model_and_tok=model_and_tok, batch_size=batch)
            for c in cs]


def gen_bare(model_and_tok, prompts, max_new, samples, temperature):
    model, tok = model_and_tok
    out = []
    for p in prompts:
        ids = tok(chat_text(tok, p), return_tensors="pt", add_special_tokens=False)
        kw = dict(do_sample=True, temperature=temperature, top_p=0.95) if temperature else dict(do_sample=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new, num_return_sequences=samples,
                                 pad_token_id=tok.pad_token_id, **kw)
        out += tok.batch_decode(gen[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def ct2_convert(model_dir: Path, out: Path) -> Path:
    import ctranslate2.converters
    ctranslate2.converters.TransformersConverter(str(model_dir)).convert(str(out), quantization="float32",
                                                                         force=True)
    return out


def gen_ct2(generator, tok, prompts, max_new, samples, temperature):
    tokens = [tok.convert_ids_to_tokens(tok(chat_text(tok, p), add_special_tokens=False)["input_ids"])
              for p in prompts]
    kw = dict(sampling_temperature=temperature, sampling_topp=0.95, num_hypotheses=samples, sampling_topk=0) \
        if temperature else dict(sampling_topk=1)
    if samples > 1:  # ct2 returns num_hypotheses per prompt only with beam search; repeat prompts for sampling
        tokens, kw = [t for t in tokens for _ in range(samples)], {**kw, "num_hypotheses": 1}
    results = generator.generate_batch(tokens, max_length=max_new, include_prompt_in_result=False,
                                       end_token=tok.eos_token, max_batch_size=16, **kw)
    return [tok.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]


def sft_bare(model_dir: Path, texts: list[str], spec: SFTSpec, seed: int) -> int:
    """A plain PyTorch loop over the same batches as the kit: AdamW, linear decay, padding masked out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    trained = 0
    for i in range(0, len(texts), spec.batch):
        batch = tok([t + tok.eos_token for t in texts[i:i + spec.batch]], return_tensors="pt", padding=True,
                    truncation=True, max_length=spec.max_len)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss / spec.grad_accum
        loss.backward()
        trained += int(batch["attention_mask"].sum())
        if (i // spec.batch + 1) % spec.grad_accum == 0:
            opt.step()
            opt.zero_grad()
    return trained


def grpo_step(model_dir: Path, prompts, golds, work: Path) -> dict:
    """Seconds of one GRPO optimizer step (group 4, 32 new tokens, the cpu profile) and of its generation."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pastkit.judges import TokenF1Judge
    from pastkit.training import device_args, quiet_trainer

    judge = TokenF1Judge()

    def reward(prompts, completions, gold, **_):
        return [judge.score("", g, c[-1]["content"]) for g, c in zip(gold, completions)]

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts], "gold": golds})
    args = GRPOConfig(output_dir=str(work), max_steps=len(prompts), learning_rate=1e-5, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=32, temperature=0.7, top_p=0.9, top_k=50, beta=0.001,
                      save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True, **device_args())
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=reward, args=args,
                          train_dataset=data, processing_class=tok)
    quiet_trainer(trainer)
    gen_time = []
    real = trainer._generate_single_turn

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = real(*a, **kw)
        gen_time.append(time.perf_counter() - t0)
        return out

    trainer._generate_single_turn = timed
    trainer.train()
    steps = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
    return {"step": min(steps), "generation": min(gen_time), "steps": len(steps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller workloads (a minute), to check the script")
    args = ap.parse_args()
    torch.manual_seed(0)
    model_dir = Path(resolve("smollm2-135m-instruct"))
    passages = load_passages("train_round1_50")  # source passages: never the test split
    n = 4 if args.quick else 16
    questions = [q["question"] for p in passages for q in p["questions"]][:2 * n]
    mt = load_model(model_dir)
    tok = mt[1]
    rows = []

    workloads = [("answers: greedy, 48 new tokens", [QA_PROMPT.format(question=q) for q in questions], 48, 1, 0.0),
                 ("implications: sampled, 2 × 160 tokens",
                  [IMPLICATIONS_PROMPT.format(passage=p["context"]) for p in passages[:n]], 160, 2, 1.0)]
    work = Path(tempfile.mkdtemp(prefix="pastkit-bench-"))
    try:
        t0 = time.perf_counter()
        import ctranslate2
        ct2_dir = ct2_convert(model_dir, work / "ct2")
        convert = time.perf_counter() - t0
        generator = ctranslate2.Generator(str(ct2_dir), device="cpu", intra_threads=torch.get_num_threads())
        methods = [("pastkit `generate` (64 sequences a batch, by length)", lambda *w: gen_kit(mt, *w)),
                   ("pastkit `generate` with batch_size=16 (the old default)", lambda *w: gen_kit(mt, *w, batch=16)),
                   ("bare `model.generate` loop (batch 1)", lambda *w: gen_bare(mt, *w)),
                   ("CTranslate2 fp32 (16 a batch)", lambda *w: gen_ct2(generator, tok, *w))]
        for name, *workload in workloads:
            for method, fn in methods:
                secs, texts = best(lambda fn=fn, w=workload: fn(*w), args.repeats)
                tokens = count_new_tokens(tok, texts)
                extra = f" + {convert:.1f} s conversion per checkpoint" if method.startswith("CTranslate2") else ""
                rows.append((name, method, f"{len(texts)} sequences, {tokens} tokens", f"{secs:.1f}{extra}",
                             f"{tokens / secs:.0f}", f"{tokens / (secs + convert):.0f}" if extra else ""))
                print(rows[-1], flush=True)

        texts = cpt_documents(passages[:n], None)
        spec = SFTSpec(epochs=1, lr=7e-5, batch=4, grad_accum=2, max_len=512)
        kit_tokens = sum(len(tok(t + tok.eos_token)["input_ids"][:512]) for t in texts)
        secs, _ = best(lambda: train_sft(model_dir, [{"text": t} for t in texts], work / "sft" / str(time.time()),
                                         spec, 0, log=lambda *_: None), args.repeats)
        rows.append(("SFT: full FT, batch 4 × 2 accumulation", "pastkit `train_sft` (trl SFTTrainer)",
                     f"{len(texts)} passages, {kit_tokens} tokens", f"{secs:.1f}", f"{kit_tokens / secs:.0f}", ""))
        print(rows[-1], flush=True)
        secs, trained = best(lambda: sft_bare(model_dir, texts, spec, 0), args.repeats)
        rows.append(("", "bare PyTorch loop (AdamW)", f"{trained} tokens", f"{secs:.1f}", f"{trained / secs:.0f}", ""))
        print(rows[-1], flush=True)

        golds = [q["answer"] for p in passages for q in p["questions"]][:4]
        g = grpo_step(model_dir, [QA_PROMPT.format(question=q) for q in questions[:4]], golds, work / "grpo")
        rows.append(("GRPO: one step, group 4, 32 new tokens", "whole step (trl GRPOTrainer)", f"{g['steps']} steps",
                     f"{g['step']:.2f}", "", ""))
        rows.append(("", "of which generation (HF generate)", "", f"{g['generation']:.2f}", "", ""))
        rows.append(("", "of which the rest (reward, log-probs, backward, AdamW)", "",
                     f"{g['step'] - g['generation']:.2f}", "", ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| workload | method | size | seconds | tokens/s | tokens/s incl. conversion |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
