"""Decoding Llama-family models on a CPU near the machine's limit: a static KV cache and one call per step.

On a 2-core CPU, HF `generate` already decodes SmolLM2-135M in fp32 at about half of the matrix products' bound
(bench/throughput.py), so a better loop gains little there. What this decoder adds: each distinct prompt is
prefilled once for all its samples (trl repeats every prompt `group` times for GRPO), a single-query attention
that is cheaper than torch's fused CPU kernel in bf16, and bf16 weights cast once per call. It holds the keys and
values of a batch in one preallocated tensor per layer, writes each step's in place, and runs the model's own
modules' weights through a few fused operations per layer. It computes what the model computes, token by
token: the same RMSNorm, rotary embedding (the model's own `rotary_emb`), grouped-query attention and SiLU MLP,
in the model's dtype; greedy tokens match HF `generate` (tests/test_decoding.py), up to
float rounding where two logits tie to the last bit. Sampling applies temperature, top-k and top-p in HF's
order and draws from torch's global generator, as `generate` does. `extend` continues contexts that grow by a
turn at a time (ToolBench's episodes) from the keys and values an earlier call kept, stopping at stop strings by
HF's rule and returning each token's log-probability, as `generate` with `stop_strings` and `output_scores` does.

`cpu_bf16` runs the matrix products on bf16 copies of the weights (made once per call, since a trainer changes
the weights between calls), as bf16 autocast does; norms, softmax and the residual stream stay fp32.

Supported: `LlamaForCausalLM` and `Qwen2ForCausalLM` (q/k/v biases) with SiLU MLPs; anything else, and any
generation option beyond greedy, temperature, top-k and top-p, goes to HF `generate` (`supports`,
`serve_generate`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def supports(model) -> bool:
    """Can `Decoder` run this model: a supported architecture, on a CPU, with plain SiLU MLPs and no tensor
    parallel pretraining split."""
    if type(model).__name__ not in ARCHITECTURES:
        return False
    cfg = model.config
    return (cfg.hidden_act == "silu" and not getattr(cfg, "mlp_bias", False)
            and getattr(cfg, "pretraining_tp", 1) == 1 and next(model.parameters()).device.type == "cpu"
            and not getattr(cfg, "use_sliding_window", False))


class Decoder:
    """A batch decoder over a loaded HF causal LM's weights (no copy in fp32: a trainer's updates are seen)."""

    def __init__(self, model, cpu_bf16: bool = False):
        if not supports(model):
            raise ValueError(f"{type(model).__name__}: not a model this decoder supports ({ARCHITECTURES})")
        self.model, self.cfg = model, model.config
        self.compute = torch.bfloat16 if cpu_bf16 else next(model.parameters()).dtype
        self.heads, self.kv_heads = self.cfg.num_attention_heads, self.cfg.num_key_value_heads
        self.head_dim = getattr(self.cfg, "head_dim", None) or self.cfg.hidden_size // self.heads

    def _weights(self) -> tuple[list[dict], torch.Tensor]:
        """Per layer: the fused q/k/v and gate/up matrices (in the compute dtype), taken from the live modules;
        and the LM head's matrix."""
        layers = []
        for layer in self.model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).to(self.compute)
            bias = None
            if att.q_proj.bias is not None:
                bias = torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]).to(self.compute)
            layers.append({"qkv": qkv, "qkv_bias": bias, "o": att.o_proj.weight.to(self.compute),
                           "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).to(self.compute),
                           "down": mlp.down_proj.weight.to(self.compute),
                           "ln1": layer.input_layernorm, "ln2": layer.post_attention_layernorm})
        return layers, self.model.lm_head.weight.to(self.compute)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x.to(w.dtype), w, b)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
                 eos_token_id, pad_token_id: int, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, num_return_sequences: int = 1) -> torch.Tensor:
        """[B·n, T + new] token ids: the (left-padded) prompts and their continuations, pad after each EOS;
        what HF `generate` returns for the same arguments."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        tokens, *_ = self._run(input_ids, attention_mask, None, max_new_tokens, _eos(eos_token_id), pad_token_id,
                               (temperature, top_k, top_p) if do_sample else None, None)
        return torch.cat([input_ids, tokens], dim=1)

    @torch.no_grad()
    def extend(self, contexts: list[list[int]], caches: list, max_new_tokens: int, eos_token_id, pad_token_id: int,
               do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               stop: StopStrings | None = None) -> tuple[list[list[int]], list[list[float]], list]:
        """Continue each context, as HF `generate` with `output_scores` and `stop_strings` would, reusing what an
        earlier call computed: a multi-turn episode's context grows by one turn and one observation at a time, and
        re-reading all of it every turn cost most of a ToolBench episode. `caches[i]` is None or what this method
        returned for the row last time (the keys and values of a prefix of `contexts[i]`); only the rest is
        prefilled. Returns, per row: its new tokens (up to and including EOS or a stop string's last token), their
        log-probabilities under the distribution they were drawn from (HF's processed scores), and the cache of
        the context and the new tokens but the last (never computed), for the next call."""
        batch, width = len(contexts), max(map(len, contexts))
        ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for i, c in enumerate(contexts):
            ids[i, width - len(c):] = torch.tensor(c, dtype=torch.long)
            mask[i, width - len(c):] = 1
        past = None if all(c is None for c in caches) else caches
        tokens, logprobs, lengths, cache = self._run(ids, mask, past, max_new_tokens, _eos(eos_token_id),
                                                     pad_token_id, (temperature, top_k, top_p) if do_sample else None,
                                                     stop and (stop, [c[-stop.width:] for c in contexts]))
        out = ([], [], [])
        for i, (c, n) in enumerate(zip(contexts, lengths.tolist())):
            out[0].append(tokens[i, :n].tolist())
            out[1].append(logprobs[i, :n].tolist())
            first = width - len(c)
            out[2].append(torch.stack([torch.stack([k[i, :, first:width + n - 1], v[i, :, first:width + n - 1]])
                                       for k, v in cache]))
        return out

    def _run(self, input_ids, attention_mask, past, max_new_tokens: int, eos: torch.Tensor, pad_token_id: int,
             sampling, stop) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """The prefill and the decoding loop: [B, new] tokens (pad after a row ends), their log-probabilities,
        each row's number of tokens (to EOS or a stop string, or all of them), and the batch's cache. `past`: per
        row None or the cache of a prefix of its context (`extend`)."""
        batch, prompt_len = input_ids.shape
        total = prompt_len + max_new_tokens
        valid = torch.zeros(batch, total, dtype=torch.bool)  # which cache positions hold real tokens
        valid[:, :prompt_len] = attention_mask.bool()
        valid[:, prompt_len:] = True  # generated positions stay visible after EOS, as in HF generate
        positions = attention_mask.long().cumsum(-1) - 1
        positions.masked_fill_(attention_mask == 0, 1)
        layers, head = self._weights()
        shape = (batch, self.kv_heads, total, self.head_dim)
        # Zeros where a continued row's padding is never written (a masked-out NaN would still poison the values).
        blank = torch.empty if past is None else torch.zeros
        cache = [(blank(shape, dtype=self.compute), blank(shape, dtype=self.compute)) for _ in layers]
        if past is None:
            logits = self._prefill_distinct(input_ids, positions, valid, layers, head, cache)
        else:
            logits = self._prefill_rest(input_ids, attention_mask, positions, valid, past, layers, head, cache)
        out, scores_out = [], []
        unfinished = torch.ones(batch, dtype=torch.bool)
        lengths = torch.zeros(batch, dtype=torch.long)  # each row's tokens up to and including its last
        next_pos = positions[:, -1:] + 1
        for step in range(max_new_tokens):
            scores = logits.float()
            if sampling:
                scores = _warp(scores, *sampling)
                token = torch.multinomial(F.softmax(scores, dim=-1), 1)[:, 0]
            else:
                token = scores.argmax(-1)
            scores_out.append(F.log_softmax(scores, dim=-1).gather(-1, token[:, None])[:, 0])
            token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
            out.append(token)
            lengths += unfinished
            if len(eos):
                unfinished &= ~torch.isin(token, eos)
            if stop:
                strings, tails = stop
                for i, t in zip(unfinished.nonzero()[:, 0].tolist(), token[unfinished].tolist()):
                    tails[i] = tails[i][1 - strings.width:] + [t]
                    unfinished[i] = not strings.hit(tails[i])
            if not unfinished.any() or step == max_new_tokens - 1:
                break
            cur = prompt_len + step
            logits = self._forward(token[:, None], next_pos, layers, head, cache, cur, valid[:, None, None, :cur + 1])
            next_pos = next_pos + 1
        return torch.stack(out, dim=1), torch.stack(scores_out, dim=1), lengths, cache

    def _prefill_distinct(self, input_ids, positions, valid, layers, head, cache) -> torch.Tensor:
        """The prompts, each distinct one once (GRPO asks for a group of completions of every prompt; trl repeats
        the prompt rows): causal over real tokens; a padding position sees itself only (finite, never seen)."""
        batch, prompt_len = input_ids.shape
        rows, inverse = torch.unique(torch.cat([input_ids, valid[:, :prompt_len].long()], dim=1), dim=0,
                                     return_inverse=True)
        first = torch.full((len(rows),), batch, dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(batch), reduce="amin")
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool).tril()
        mask = (causal & valid[first, None, :prompt_len]) | torch.eye(prompt_len, dtype=torch.bool)
        prompt_shape = (len(first), self.kv_heads, prompt_len, self.head_dim)
        shared = [(torch.empty(prompt_shape, dtype=self.compute), torch.empty(prompt_shape, dtype=self.compute))
                  for _ in layers]
        logits = self._forward(input_ids[first], positions[first], layers, head, shared, 0, mask[:, None])[inverse]
        for (k, v), (k_prompt, v_prompt) in zip(cache, shared):
            k[:, :, :prompt_len] = k_prompt[inverse]
            v[:, :, :prompt_len] = v_prompt[inverse]
        return logits

    def _prefill_rest(self, input_ids, attention_mask, positions, valid, past, layers, head, cache) -> torch.Tensor:
        """Each row's cached prefix copied in place; then one chunk, as wide as the longest uncached suffix, run
        over every row (a row's older tokens in the chunk are computed again, the same keys and values)."""
        batch, width = input_ids.shape
        lengths = attention_mask.sum(-1).tolist()
        cached = [0 if p is None else p.shape[3] for p in past]
        if any(c >= n for c, n in zip(cached, lengths)):
            raise ValueError("a cache must cover less than its context: the next token's logits need a prefill")
        for i, p in enumerate(past):
            if p is not None:
                first = width - lengths[i]
                for (k, v), layer in zip(cache, p):
                    k[i, :, first:first + cached[i]] = layer[0]
                    v[i, :, first:first + cached[i]] = layer[1]
        start = width - max(n - c for n, c in zip(lengths, cached))
        causal = torch.ones(width, width, dtype=torch.bool).tril()[start:]
        mask = (causal & valid[:, None, :width]) | torch.eye(width, dtype=torch.bool)[start:]
        return self._forward(input_ids[:, start:], positions[:, start:], layers, head, cache, start, mask[:, None])

    def _forward(self, ids, positions, layers, head, cache, start: int, mask) -> torch.Tensor:
        """Run `ids` ([B, t], at cache positions start..start+t) through every layer; the last position's logits."""
        m = self.model.model
        x = m.embed_tokens(ids)
        cos, sin = m.rotary_emb(x, positions)
        b, t, _ = x.shape
        end = start + t
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for w, (k_cache, v_cache) in zip(layers, cache):
            h = w["ln1"](x)
            qkv = self._linear(h, w["qkv"], w["qkv_bias"])
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            att = _attend(q, k_cache[:, :, :end], v_cache[:, :, :end], mask, self.head_dim ** -0.5)
            x = x + self._linear(att.transpose(1, 2).reshape(b, t, q_size), w["o"]).to(x.dtype)
            h = w["ln2"](x)
            gate, up = self._linear(h, w["gate_up"]).chunk(2, dim=-1)
            x = x + self._linear(F.silu(gate) * up, w["down"]).to(x.dtype)
        return self._linear(m.norm(x[:, -1]), head)


def _eos(eos_token_id) -> torch.Tensor:
    return torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []),
                        dtype=torch.long)


class StopStrings:
    """HF's `stop_strings` test (`StopStringCriteria`) on the tokens' texts: a sequence stops when one of the
    strings ends inside its last token and starts no later than that token does ("Observation:" ends a ReAct
    turn). `width` tokens of a sequence's end are enough to decide (every token is at least one character)."""

    def __init__(self, tokenizer, strings: list[str]):
        self.tok, self.strings = tokenizer, list(strings)
        self.width = max(map(len, self.strings)) + 1
        self._texts: dict[int, str] = {}

    def _text(self, token: int) -> str:
        if token not in self._texts:
            self._texts[token] = self.tok.convert_tokens_to_string([self.tok.convert_ids_to_tokens(token)])
        return self._texts[token]

    def hit(self, ids: list[int]) -> bool:
        before = "".join(map(self._text, ids[:-1]))
        text = before + self._text(ids[-1])
        for s in self.strings:
            at = text.find(s, max(0, len(before) - len(s) + 1))
            if 0 <= at <= len(before):
                return True
        return False


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Grouped-query attention. A prompt goes through torch's fused kernel; a decoding step's single query goes
    through two batched matrix products with the query heads of one key/value head stacked, since the fused CPU
    kernel spent 1.3 ms a call on it in bf16 at batch 64 (more than the step's weights)."""
    b, heads, t, d = q.shape
    kv = k.shape[1]
    if t > 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    scores = (q.view(b, kv, heads // kv, d) @ k.transpose(-1, -2)).float() * scale  # [b, kv, group, T]
    scores = scores.masked_fill(~mask, -float("inf"))
    return (scores.softmax(-1).to(v.dtype) @ v).view(b, heads, 1, d)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding as the Llama code applies it (rotate_half), in x's dtype."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _warp(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """HF's temperature, top-k and top-p logits warpers, in that order (transformers' generation/logits_process)."""
    if temperature and temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p is not None and top_p < 1.0:
        ordered, index = torch.sort(scores, descending=False)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(1, index, drop), -float("inf"))
    return scores


# GenerationConfig fields the decoder honours; any other field set to a non-default value sends the call to HF.
_HONOURED = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "pad_token_id", "bos_token_id",
             "eos_token_id", "disable_compile", "transformers_version", "use_cache", "num_return_sequences",
             "_from_model_config", "cache_implementation"}
_NEUTRAL = {"repetition_penalty": 1.0, "min_p": None, "output_attentions": False, "output_hidden_states": False,
            "num_beams": 1, "return_dict_in_generate": False, "output_scores": False}


def serve_generate(model, cpu_bf16: bool = False) -> None:
    """Route `model.generate` (trl's rollouts call it with input_ids, attention_mask and a GenerationConfig)
    through a `Decoder`, for the options it honours; anything else still goes to HF `generate` (in one bf16
    autocast region when `cpu_bf16`). HF's defaults apply to unset options (top_k 50, temperature 1, top_p 1)."""
    from .training import autocast

    decoder, hf_generate = Decoder(model, cpu_bf16), model.generate

    def generate(input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        cfg = generation_config or model.generation_config
        fields = cfg.to_diff_dict()
        plain = not kwargs and input_ids is not None and cfg.max_new_tokens and all(
            k in _HONOURED or _NEUTRAL.get(k, object()) == v for k, v in fields.items())
        if not plain:
            with autocast(cpu_bf16):
                return hf_generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=cfg,
                                   **kwargs)
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else model.generation_config.eos_token_id
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos if isinstance(eos, int) else eos[0])
        return decoder.generate(input_ids, attention_mask, cfg.max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                do_sample=bool(cfg.do_sample),
                                temperature=1.0 if cfg.temperature is None else cfg.temperature,
                                top_p=1.0 if cfg.top_p is None else cfg.top_p,
                                top_k=50 if cfg.top_k is None else cfg.top_k,
                                num_return_sequences=cfg.num_return_sequences or 1)

    model.generate = generate
