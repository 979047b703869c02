"""Shared fixtures: tiny synthetic checkpoints built in the test, never a downloaded model."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


def save_ckpt(path: Path, tensors: dict[str, torch.Tensor], shards: int = 1,
              arch: str = "LlamaForCausalLM") -> Path:
    """Write a model dir with safetensors weights (sharded with an index when shards > 1) and a config."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    per = math.ceil(len(names) / shards)
    groups = [names[i:i + per] for i in range(0, len(names), per)]
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in names}, path / "model.safetensors", {"format": "pt"})
    else:
        weight_map = {}
        for i, group in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            save_file({k: tensors[k].contiguous() for k in group}, path / fname, {"format": "pt"})
            weight_map.update({k: fname for k in group})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama"}))
    (path / "tokenizer_config.json").write_text("{}")
    return path


def llama_like(seed: int, layers: int = 2, d: int = 16, vocab: int = 32, dtype=torch.float32) -> dict:
    """Random tensors named like a Llama checkpoint."""
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(vocab, d, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in "qkvo":
            t[p + f"self_attn.{m}_proj.weight"] = torch.randn(d, d, generator=g)
        for m, shape in (("gate", (2 * d, d)), ("up", (2 * d, d)), ("down", (d, 2 * d))):
            t[p + f"mlp.{m}_proj.weight"] = torch.randn(*shape, generator=g)
        t[p + "input_layernorm.weight"] = torch.randn(d, generator=g)
        t[p + "post_attention_layernorm.weight"] = torch.randn(d, generator=g)
    t["model.norm.weight"] = torch.randn(d, generator=g)
    return {k: v.to(dtype) for k, v in t.items()}


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def listing(path: Path) -> list[str]:
    """Everything in a folder, hidden temp files included: what a failed write must not leave behind."""
    return sorted(p.name for p in Path(path).iterdir())


@pytest.fixture
def trio(tmp_path):
    """sft, rl = sft + δ, target: three same-architecture 3-shard checkpoints."""
    sft = llama_like(1)
    rl = {k: v + 0.01 * torch.randn_like(v) for k, v in sft.items()}
    target = llama_like(2)
    return (save_ckpt(tmp_path / "sft", sft, shards=3), save_ckpt(tmp_path / "rl", rl, shards=3),
            save_ckpt(tmp_path / "target", target, shards=3), sft, rl, target)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The kit's tiny random Llama (2 layers, byte-level BPE tokenizer), saved in several shards."""
    from pastkit.models import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", max_shard_size="200KB")
