"""The machine's roofline and where the kit stands against it: decoding, one GRPO step, SFT (SmolLM2-135M).

    .venv/bin/python bench/throughput.py [--quick] [--only roofline decode grpo sft episodes compile]

Roofline: this CPU's matrix-product rate (fp32, bf16) at two shapes of the model's products, and its memory read
bandwidth, with plain torch. Decoding: per-step time of HF `generate` (bf16: inside one autocast region, as the
kit ran it) against the kit's `decoding.Decoder` on the same SQuAD questions (source passages, never test), the
prompt's prefill timed apart (a run of 1 token) from the steps (33 tokens minus 1, every sequence made to run
all 33), and the step's bound: its products at the measured rate or its weights at the measured bandwidth,
whichever is slower. GRPO: one optimizer step of trl's GRPOTrainer as `train_grpo` configures it (8 prompts x
group 4 = 32 rollouts of 32 tokens), split into rollout, reward and the rest (log-probs, backward, AdamW), with
HF `generate` and with the kit's decoder, at beta 0.001 (a reference model runs) and 0. SFT: trained tokens/s of
`train_sft` against a bare PyTorch loop over the same batches (AdamW), fp32 and bf16 autocast. Episodes: ToolBench's
multi-turn episodes (`agent.run_episodes`: 8 Movies queries, the source category, x 3 runs, 3 turns of up to 80
tokens, sampled as 04 samples them) through HF `generate` with `stop_strings` and through the kit's decoder with
each episode's cache kept between turns, fp32 (as scored) and bf16 (as GRPO rolls out), one run each from the same
seed, and how many episodes came out token for token the same. Compile: a candidate the kit does not use,
the decoder through `torch.compile`, timed last.

Every figure is the best of `--repeats` runs in one process on an otherwise idle machine; it prints Markdown.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from pastkit.benchmarks.squad import QA_PROMPT, cpt_documents, load_passages
from pastkit.decoding import Decoder, serve_generate
from pastkit.generation import chat_text, load_model
from pastkit.knowledge import SFTSpec, train_sft
from pastkit.models import resolve
from pastkit.training import autocast, device_args


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def roofline(repeats: int) -> dict:
    """Measured GFLOPS of x[M,576] @ W[576,1536]ᵀ-shaped products (M = 2048 and 64), fp32 and bf16, and GB/s read."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        for m in (2048, 64):
            x, w = torch.randn(m, 576).to(dtype), torch.randn(1536, 576).to(dtype)
            n = 20 if m == 2048 else 400
            secs = best(lambda x=x, w=w, n=n: [torch.nn.functional.linear(x, w) for _ in range(n)], repeats + 1) / n
            out[(str(dtype).removeprefix("torch."), m)] = 2 * m * 576 * 1536 / secs / 1e9
    big = torch.ones(2**28)  # 1 GiB: far past every cache
    out["GB/s"] = big.numel() * 4 / best(lambda: big.sum(), repeats + 2) / 1e9
    return out


def prompt_batch(tok, questions, b: int):
    return tok([chat_text(tok, q) for q in questions[:b]], return_tensors="pt", padding=True, add_special_tokens=False)


def kit_decode(decoder, tok, batch, n: int):
    return decoder.generate(batch["input_ids"], batch["attention_mask"], n, eos_token_id=[],
                            pad_token_id=tok.pad_token_id)


def decode_times(fn, repeats: int) -> tuple[float, float]:
    """(prefill seconds, seconds a step) of `fn(n)`, which decodes n tokens: 33 tokens less the prefill, over 32."""
    prefill = best(lambda: fn(1), repeats)
    return prefill, (best(lambda: fn(33), repeats) - prefill) / 32


def decode(model, tok, questions, repeats: int, peaks: dict) -> list[tuple]:
    rows = []
    layer_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    head_params = model.lm_head.weight.numel()
    for bf16 in (False, True):
        name = "bf16" if bf16 else "fp32"
        decoder = Decoder(model, cpu_bf16=bf16)
        for b in (1, 16, 64):
            batch = prompt_batch(tok, questions, b)

            def hf(n, batch=batch, bf16=bf16):
                with torch.no_grad(), autocast(bf16):
                    model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, temperature=None,
                                   top_p=None, top_k=None, pad_token_id=tok.pad_token_id)

            def kit(n, batch=batch, decoder=decoder):
                kit_decode(decoder, tok, batch, n)

            flops = 2 * b * (layer_params + head_params)
            weight_bytes = (layer_params + head_params) * (2 if bf16 else 4)
            rate = peaks[(name, 64)] if b > 1 else peaks[(name, 2048)]
            bound = max(flops / rate / 1e9, weight_bytes / peaks["GB/s"] / 1e9)
            for method, fn in (("HF generate", hf), ("kit decoder", kit)):
                fn(2)
                prefill, step = decode_times(fn, repeats)
                rows.append((f"decode {name}, batch {b} ({batch['input_ids'].shape[1]}-token prompts)", method,
                             f"{prefill:.2f}", f"{step * 1000:.0f}", f"{b / step:.0f}", f"{bound / step:.0%}"))
                print(rows[-1], flush=True)
    return rows


def compiled(model, tok, questions, repeats: int) -> list[tuple]:
    """A candidate the kit does not use: the decoder's forward through `torch.compile(dynamic=True)`, against the
    eager decoder in the same process, with the first call's time (the compilation) and how many greedy rows came
    out the same. Run last: in one probe, eager batch-64 steps timed after a compilation in the same process
    took 230 ms against 205 ms before it."""
    rows = []
    for bf16 in (False, True):
        name = "bf16" if bf16 else "fp32"
        for b in (1, 16, 64):
            batch = prompt_batch(tok, questions, b)
            eager, fast = Decoder(model, cpu_bf16=bf16), Decoder(model, cpu_bf16=bf16)
            fast._forward = torch.compile(fast._forward, dynamic=True)

            t0 = time.perf_counter()
            kit_decode(fast, tok, batch, 2)
            compile_s = time.perf_counter() - t0
            same = int((kit_decode(fast, tok, batch, 33) == kit_decode(eager, tok, batch, 33)).all(1).sum())
            eager_step, fast_step = [decode_times(lambda n, d=d, x=batch: kit_decode(d, tok, x, n), repeats)[1]
                                     for d in (eager, fast)]
            rows.append((f"decode {name}, batch {b}", f"{compile_s:.0f}", f"{eager_step * 1000:.0f}",
                         f"{fast_step * 1000:.0f}", f"{same} of {b}"))
            print(rows[-1], flush=True)
    return rows


def episodes(model, tok) -> list[tuple]:
    import pastkit.decoding
    from pastkit.benchmarks.toolbench.agent import RulesSimulator, Task, make_solution_judge, run_episodes
    from pastkit.benchmarks.toolbench.benchmark import ToolbenchParams, load_toolbench

    p, data = ToolbenchParams(), load_toolbench("shipped")
    queries = [q for q in data["queries"] if q["category"] == p.source_category][-8:]
    tasks = [Task(q["query"], tuple(q["apis"]), tuple(q["relevant"])) for q in queries for _ in range(p.eval_runs)]
    supports, rows = pastkit.decoding.supports, []
    for bf16 in (False, True):
        played = {}
        for method in ("HF generate", "kit decoder"):
            pastkit.decoding.supports = supports if method == "kit decoder" else (lambda m: False)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            played[method] = run_episodes(model, tok, tasks, RulesSimulator(data["tools"]),
                                          make_solution_judge("grounded"), p.max_turns, p.rl_max_new_tokens,
                                          p.eval_temperature, p.rl_top_p, p.rl_top_k, cpu_bf16=bf16)
            secs = time.perf_counter() - t0
            made = sum(sum(e.env_mask) for e in played[method])
            rows.append([f"ToolBench episodes {'bf16' if bf16 else 'fp32'}, {len(tasks)} x {p.max_turns} turns",
                         method, f"{secs:.1f}", f"{made / secs:.0f}", ""])
            print(rows[-1], flush=True)
        same = sum(a.completion_ids == b.completion_ids for a, b in zip(*played.values()))
        rows[-1][-1] = f"{same} of {len(tasks)}"
    pastkit.decoding.supports = supports
    return rows


def _timed(fn, into: list):
    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        into.append(time.perf_counter() - t0)
        return out
    return timed


def grpo(model_dir: Path, questions, golds, work: Path, steps: int) -> list[tuple]:
    """One GRPO step's split: HF generate against the kit's decoder, beta 0.001 and 0, and LoRA GRPO at beta 0."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pastkit.judges import TokenF1Judge
    from pastkit.training import quiet_trainer

    judge = TokenF1Judge()

    def reward(prompts, completions, gold, **_):
        return [judge.score("", g, c[-1]["content"]) for g, c in zip(gold, completions)]

    rows = []
    variants = [(0.001, "HF generate"), (0.001, "kit decoder"), (0.0, "HF generate"), (0.0, "kit decoder"),
                (0.0, "LoRA r 32 (peft generate)")]
    for beta, how in variants:
        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.padding_side = "left"
        prompts = [[{"role": "user", "content": QA_PROMPT.format(question=q)}] for q in questions[:8 * steps]]
        data = Dataset.from_dict({"prompt": prompts, "gold": golds[:8 * steps]})
        args = GRPOConfig(output_dir=str(work / f"grpo-{beta}-{how[:3]}"), max_steps=steps, learning_rate=1e-5,
                          per_device_train_batch_size=32, num_generations=4, max_completion_length=32,
                          temperature=0.7, top_p=0.9, top_k=50, beta=beta, save_strategy="no", report_to="none",
                          logging_steps=1, disable_tqdm=True, **device_args())
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        peft_config = None
        if how == "kit decoder":
            serve_generate(model)
        elif how.startswith("LoRA"):
            from peft import LoraConfig

            from pastkit.knowledge import LORA_TARGETS
            peft_config = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                     task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok, peft_config=peft_config)
        quiet_trainer(trainer)
        spent = {"rollout": [], "reward": []}
        for key, attr in (("rollout", "_generate_single_turn"), ("reward", "_calculate_rewards")):
            setattr(trainer, attr, _timed(getattr(trainer, attr), spent[key]))
        trainer.train()
        step_times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
        i = min(range(len(step_times)), key=step_times.__getitem__)
        total, roll, rew = step_times[i], spent["rollout"][i], spent["reward"][i]
        rows.append((f"GRPO step, 32 rollouts x 32 tokens, beta {beta:g}", how, f"{total:.1f}", f"{roll:.1f}",
                     f"{rew:.2f}", f"{total - roll - rew:.1f}", f"{32 / roll:.1f}"))
        print(rows[-1], flush=True)
    return rows


def sft_bare(model_dir: Path, texts: list[str], spec: SFTSpec, seed: int, bf16: bool) -> float:
    """A plain PyTorch loop over batches like the kit's (AdamW, padding masked out): seconds of the loop alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    texts = sorted(texts, key=len)  # the kit's `LengthBatches` batch by length too
    t0 = time.perf_counter()
    for i in range(0, len(texts), spec.batch):
        batch = tok([t + tok.eos_token for t in texts[i:i + spec.batch]], return_tensors="pt", padding=True,
                    truncation=True, max_length=spec.max_len)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = model(**batch, labels=labels).loss / spec.grad_accum
        loss.backward()
        if (i // spec.batch + 1) % spec.grad_accum == 0:
            opt.step()
            opt.zero_grad()
    return time.perf_counter() - t0


def _sft_runtime(model_dir: Path, texts: list[str], out: Path, spec: SFTSpec) -> float:
    """Seconds of `train_sft`'s training loop (the trainer's train_runtime: no loading, tokenizing or saving)."""
    train_sft(model_dir, [{"text": t} for t in texts], out, spec, 0, log=lambda *_: None)
    import json
    return next(e["train_runtime"] for e in json.loads((out / "train_log.json").read_text()) if "train_runtime" in e)


def sft(model_dir: Path, tok, passages, work: Path, repeats: int) -> list[tuple]:
    texts = cpt_documents(passages, None)
    rows = []
    for bf16 in (False, True):
        spec = SFTSpec(epochs=1, lr=7e-5, batch=4, grad_accum=2, max_len=512, cpu_bf16=bf16)
        tokens = sum(len(tok(t + tok.eos_token)["input_ids"][:512]) for t in texts)
        kit = min(_sft_runtime(model_dir, texts, work / f"sft-{bf16}-{i}", spec) for i in range(repeats))
        bare = min(sft_bare(model_dir, texts, spec, 0, bf16) for _ in range(repeats))
        name = f"SFT {'bf16' if bf16 else 'fp32'}, {len(texts)} passages, batch 4 x 2"
        rows.append((name, "kit train_sft (trl), its training loop", f"{kit:.1f}", f"{tokens / kit:.0f}",
                     f"{bare / kit:.2f}"))
        rows.append((name, "bare PyTorch loop", f"{bare:.1f}", f"{tokens / bare:.0f}", "1.00"))
        print(rows[-2:], flush=True)
    return rows


def table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer steps and passages, to check the script")
    ap.add_argument("--only", nargs="*", default=["roofline", "decode", "grpo", "sft", "episodes", "compile"])
    args = ap.parse_args()
    torch.manual_seed(0)
    model_dir = Path(resolve("smollm2-135m-instruct"))
    passages = load_passages("train_round1_50")  # source passages: never the test split
    questions = [q["question"] for p in passages for q in p["questions"]]
    golds = [q["answer"] for p in passages for q in p["questions"]]
    model, tok = load_model(model_dir)
    out = [f"threads {torch.get_num_threads()}, torch {torch.__version__}"]
    peaks = roofline(args.repeats)
    out.append(table(("roofline", "fp32", "bf16"), [
        (f"matmul GFLOPS, {m} x 576 x 1536", f"{peaks[('float32', m)]:.0f}", f"{peaks[('bfloat16', m)]:.0f}")
        for m in (2048, 64)] + [("memory read GB/s", f"{peaks['GB/s']:.1f}", "")]))
    peaks = {("fp32" if k[0] == "float32" else "bf16", k[1]) if isinstance(k, tuple) else k: v
             for k, v in peaks.items()}
    with tempfile.TemporaryDirectory(prefix="pastkit-bench-") as work:
        if "decode" in args.only:
            out.append(table(("workload", "method", "prefill s", "ms / step", "tokens/s", "of bound"),
                             decode(model, tok, questions, args.repeats, peaks)))
        if "grpo" in args.only:
            out.append(table(("workload", "rollouts by", "step s", "rollout s", "reward s", "rest s", "rollouts/s"),
                             grpo(model_dir, questions, golds, Path(work), 2 if args.quick else 3)))
        if "episodes" in args.only:
            out.append(table(("workload", "turns by", "seconds", "generated tokens/s", "episodes as HF's"),
                             episodes(model, tok)))
        if "sft" in args.only:
            out.append(table(("workload", "method", "seconds", "tokens/s", "x bare loop"),
                             sft(model_dir, tok, passages[:4 if args.quick else 12], Path(work), args.repeats)))
        if "compile" in args.only:  # last: see `compiled`
            out.append(table(("workload", "compile s", "eager ms / step", "compiled ms / step", "greedy rows same"),
                             compiled(model, tok, questions, args.repeats)))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
