"""The kit's decoder computes what HF `generate` computes: the same greedy tokens, the same samples from the same
seed, each prompt's prefill shared by its samples, and anything it does not honour handed to HF."""

import pytest
import torch
from transformers import GenerationConfig

from pastkit.decoding import Decoder, serve_generate, supports
from pastkit.generation import chat_text, generate, load_model

QUESTIONS = ["Which island has one harbour?", "What colour is the lighthouse on Varn island, and why?",
             "Who first saw the comet?", "How often does Hala return?", "Where is the Orlo bridge?"]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(tiny_model)


def _batch(tok, questions):
    return tok([chat_text(tok, q) for q in questions], return_tensors="pt", padding=True, add_special_tokens=False)


def _hf(model, tok, batch, **kw):
    with torch.no_grad():
        return model.generate(**batch, pad_token_id=tok.pad_token_id, **kw)


def test_greedy_tokens_are_hf_generates(loaded):
    model, tok = loaded
    assert supports(model)
    batch = _batch(tok, QUESTIONS)  # left-padded to the longest question
    want = _hf(model, tok, batch, max_new_tokens=24, do_sample=False)
    got = Decoder(model).generate(batch["input_ids"], batch["attention_mask"], 24,
                                  eos_token_id=model.generation_config.eos_token_id, pad_token_id=tok.pad_token_id)
    assert got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("top_k, top_p, temperature", [(0, 1.0, 1.0), (5, 0.9, 0.7), (50, 0.5, 1.3)])
def test_samples_are_hf_generates_from_the_same_seed(loaded, top_k, top_p, temperature):
    model, tok = loaded
    batch = _batch(tok, QUESTIONS[:3])
    torch.manual_seed(7)
    want = _hf(model, tok, batch, max_new_tokens=12, do_sample=True, top_k=top_k, top_p=top_p,
               temperature=temperature, num_return_sequences=4)
    torch.manual_seed(7)
    got = Decoder(model).generate(batch["input_ids"], batch["attention_mask"], 12,
                                  eos_token_id=model.generation_config.eos_token_id, pad_token_id=tok.pad_token_id,
                                  do_sample=True, top_k=top_k, top_p=top_p, temperature=temperature,
                                  num_return_sequences=4)
    assert torch.equal(got, want)  # the same draws: the same logits, warpers and generator


def test_a_prompt_repeated_in_the_batch_is_prefilled_once(loaded, monkeypatch):
    model, tok = loaded
    batch = _batch(tok, [QUESTIONS[0]] * 3 + [QUESTIONS[1]] * 2)  # trl's rollouts: each prompt `group` times
    decoder, rows = Decoder(model), []
    forward = decoder._forward
    monkeypatch.setattr(decoder, "_forward", lambda ids, *a: rows.append(ids.shape) or forward(ids, *a))
    got = decoder.generate(batch["input_ids"], batch["attention_mask"], 6, eos_token_id=[],
                           pad_token_id=tok.pad_token_id)
    assert rows[0][0] == 2 and all(r == (5, 1) for r in rows[1:])  # prefill: 2 distinct prompts; steps: 5 rows
    assert torch.equal(got, _hf(model, tok, batch, max_new_tokens=6, min_new_tokens=6, do_sample=False))


def test_the_kits_generate_answers_as_before(loaded):
    """`generation.generate` decodes through the decoder; HF's path on the same prompts gives the same text."""
    model, tok = loaded
    ours = generate(None, QUESTIONS, max_new_tokens=16, model_and_tok=(model, tok))
    batch = _batch(tok, QUESTIONS)
    ids = _hf(model, tok, batch, max_new_tokens=16, do_sample=False)
    theirs = tok.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [o[0] for o in ours] == theirs


def test_bf16_decoding_runs_its_products_in_bf16(loaded):
    model, tok = loaded
    batch = _batch(tok, QUESTIONS[:2])
    decoder = Decoder(model, cpu_bf16=True)
    layers, head = decoder._weights()
    assert head.dtype == layers[0]["qkv"].dtype == torch.bfloat16
    out = decoder.generate(batch["input_ids"], batch["attention_mask"], 8, eos_token_id=[], pad_token_id=0)
    assert out.shape == (2, batch["input_ids"].shape[1] + 8) and next(model.parameters()).dtype == torch.float32


def test_serve_generate_hands_what_it_does_not_honour_to_hf(tiny_model):
    model, tok = load_model(tiny_model)
    hf = model.generate
    calls = []
    model.generate = lambda *a, **kw: calls.append(kw) or hf(*a, **kw)
    serve_generate(model)
    batch = _batch(tok, QUESTIONS[:2])
    plain = GenerationConfig(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=[2])
    out = model.generate(**batch, generation_config=plain)
    assert calls == [] and out.shape[0] == 2
    penalised = GenerationConfig(max_new_tokens=5, do_sample=False, repetition_penalty=1.3,
                                 pad_token_id=tok.pad_token_id)
    model.generate(**batch, generation_config=penalised)
    assert len(calls) == 1 and calls[0]["generation_config"] is penalised


def test_other_architectures_are_not_claimed(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert not supports(gpt2)
    with pytest.raises(ValueError, match="not a model this decoder supports"):
        Decoder(gpt2)


@pytest.mark.parametrize("beta", [0.0, 0.01])
def test_the_reference_model_runs_only_where_the_kl_term_needs_it(beta, tiny_model, tmp_path, monkeypatch):
    """At beta = 0 no reference model is built or run (its forward pass costs as much as the policy's log-probs)."""
    from trl import GRPOTrainer

    from pastkit.skill_rl import GRPOSpec, RLTask, train_grpo

    trainers, init = [], GRPOTrainer.__init__
    monkeypatch.setattr(GRPOTrainer, "__init__", lambda self, *a, **kw: trainers.append(self) or init(self, *a, **kw))
    task = RLTask(["Q one?", "Q two?"], [lambda prompts, completions, **_: [float(len(c[-1]["content"]) % 3)
                                                                          for c in completions]])
    spec = GRPOSpec(1, 1e-3, 2, 1, beta, 1.0, 1.0, 0, 4)
    train_grpo(tiny_model, task, tmp_path / "rl", spec, seed=0, log=lambda *_: None)
    assert (trainers[0].ref_model is None) == (beta == 0.0)


def test_stop_strings_follow_hfs_rule(loaded):
    """`StopStrings.hit` says what HF's `StopStringCriteria` says, at every prefix of sequences around the stop."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    from pastkit.decoding import StopStrings

    _, tok = loaded
    stop, hf = StopStrings(tok, ["Observation:"]), StopStringCriteria(tok, ["Observation:"])
    texts = ["Thought: x\nObservation: {}", "Obs ervation: no", "a Observation:b", "Observation:Observation:",
             "ObservationObservation :", "xObservation:\n", "plain text with no stop"]
    decided = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for n in range(1, len(ids) + 1):
            want = bool(hf(torch.tensor([ids[:n]]), None)[0])
            assert stop.hit(ids[:n][-stop.width:]) == want, (text, tok.convert_ids_to_tokens(ids[:n]))
            decided.append(want)
    assert any(decided) and not all(decided)


def _rows(tok, questions):
    return [tok(chat_text(tok, q), add_special_tokens=False)["input_ids"] for q in questions]


def test_extend_stops_as_generate_with_stop_strings(loaded):
    """Greedy: the tokens HF `generate` gives with `stop_strings`, cut after the stop, and the log-probabilities of
    its `output_scores`."""
    from pastkit.decoding import StopStrings

    model, tok = loaded
    batch = _batch(tok, QUESTIONS[:3])
    free = _hf(model, tok, batch, max_new_tokens=12, do_sample=False)[0, batch["input_ids"].shape[1]:]
    text = tok.decode(free[3:6])  # a stop string row 0 meets at its 6th token (or sooner)
    out = _hf(model, tok, batch, max_new_tokens=12, do_sample=False, stop_strings=[text], tokenizer=tok,
              return_dict_in_generate=True, output_scores=True)
    gens, logps, _ = Decoder(model).extend(_rows(tok, QUESTIONS[:3]), [None] * 3, 12, eos_token_id=[],
                                           pad_token_id=tok.pad_token_id, stop=StopStrings(tok, [text]))
    width = batch["input_ids"].shape[1]
    assert len(gens[0]) <= 6 < 12
    want = torch.stack(out.scores, 1).float().log_softmax(-1)
    for j, gen in enumerate(gens):
        assert gen == out.sequences[j, width:width + len(gen)].tolist()
        torch.testing.assert_close(torch.tensor(logps[j]), want[j, torch.arange(len(gen)), gen], atol=1e-5, rtol=0)


def test_extend_from_a_cache_continues_as_a_fresh_prefill(loaded):
    """A second turn read from the first turn's cache gives what re-reading the whole context gives."""
    model, tok = loaded
    decoder, contexts = Decoder(model), _rows(tok, QUESTIONS[:4])
    first, _, caches = decoder.extend(contexts, [None] * 4, 8, eos_token_id=[], pad_token_id=tok.pad_token_id)
    observation = tok("Observation: nothing here", add_special_tokens=False)["input_ids"]
    second = [c + g + observation[:k + 2] for k, (c, g) in enumerate(zip(contexts, first))]  # unequal suffixes
    assert [c.shape[3] for c in caches] == [len(c) + len(g) - 1 for c, g in zip(contexts, first)]
    for past in (caches, [caches[0], None, caches[2], None]):
        cached = decoder.extend(second, past, 8, eos_token_id=[], pad_token_id=tok.pad_token_id)
        fresh = decoder.extend(second, [None] * 4, 8, eos_token_id=[], pad_token_id=tok.pad_token_id)
        assert cached[0] == fresh[0]
        torch.testing.assert_close(torch.tensor(cached[1]), torch.tensor(fresh[1]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cache must cover less"):
        decoder.extend([contexts[0]], [caches[0]], 4, eos_token_id=[], pad_token_id=tok.pad_token_id)
