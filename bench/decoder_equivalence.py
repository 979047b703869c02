"""Do the kit's decoder and HF `generate` give the same answers on the evaluations' own prompts?

    .venv/bin/python bench/decoder_equivalence.py [--model DIR]

SQuAD: every shipped question, asked as 02's evaluation asks it (greedy, fp32, `eval_max_new_tokens` of the cpu
profile, batches of 64). LooGLE: every question of the shipped documents, as 03 asks it (3 samples at
temperature 1, fp32, seed 0), both sides with HF's top-50 cut, which HF applied when the kit passed no top-k.
Nothing is scored and no setting is chosen here: the same model answers through both paths, and the script counts
the answers that differ and prints the first few.
"""

from __future__ import annotations

import argparse
import time

import torch

from pastkit.benchmarks.loogle import QA_PROMPT as LOOGLE_PROMPT
from pastkit.benchmarks.loogle import Loogle, LoogleParams
from pastkit.benchmarks.squad import QA_PROMPT, SquadParams, load_passages
from pastkit.generation import chat_text, generate, load_model
from pastkit.models import resolve


def hf_answers(model, tok, prompts, max_new, samples, temperature, top_k, seed, batch=64):
    """The kit's generation path as it was before the decoder: HF `generate`, prompts sorted by length."""
    torch.manual_seed(seed)
    texts = [chat_text(tok, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i], add_special_tokens=False)["input_ids"]))
    kw = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=top_k) if temperature else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = {}
    for i in range(0, len(order), max(1, batch // samples)):
        idx = order[i:i + max(1, batch // samples)]
        enc = tok([texts[j] for j in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new, num_return_sequences=samples,
                                 pad_token_id=tok.pad_token_id, **kw)
        new = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out.update((j, new[k * samples:(k + 1) * samples]) for k, j in enumerate(idx))
    return [out[i] for i in range(len(texts))]


def compare(name, prompts, ours, theirs):
    differ = [(p, a, b) for p, a, b in zip(prompts, ours, theirs) if a != b]
    print(f"{name}: {len(prompts)} prompts, {sum(map(len, ours))} answers, {len(differ)} prompts answered "
          "differently")
    for p, a, b in differ[:3]:
        print(f"  {p[-80:]!r}\n    decoder: {a}\n    HF:      {b}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    model, tok = load_model(resolve(args.model))
    files = ("train_round1_50", "train_round2_50", "val_seal200")
    questions = [q["question"] for f in files for p in load_passages(f) for q in p["questions"]]
    prompts = [QA_PROMPT.format(question=q) for q in questions]
    n = SquadParams().eval_max_new_tokens
    t0 = time.time()
    ours = generate(None, prompts, max_new_tokens=n, model_and_tok=(model, tok))
    t1 = time.time()
    theirs = hf_answers(model, tok, prompts, n, 1, 0.0, None, 0)
    print(f"SQuAD greedy: decoder {t1 - t0:.0f} s, HF {time.time() - t1:.0f} s")
    compare("SQuAD greedy", prompts, ours, theirs)
    lp = LoogleParams()
    docs = Loogle()._docs(lp)
    prompts = [LOOGLE_PROMPT.format(question=q["Q"]) for d in docs for q in d["qa"]]
    ours = generate(None, prompts, max_new_tokens=lp.eval_max_new_tokens, samples=lp.eval_samples,
                    temperature=lp.eval_temperature, top_p=1.0, top_k=50, seed=0, model_and_tok=(model, tok))
    theirs = hf_answers(model, tok, prompts, lp.eval_max_new_tokens, lp.eval_samples, lp.eval_temperature, 50, 0)
    compare("LooGLE sampled (3 at T=1, top-50 on both sides)", prompts, ours, theirs)


if __name__ == "__main__":
    main()
