"""Skill-vector arithmetic is exact, keeps sharding, and matches a direct state-dict computation."""

import json

import pytest
import torch
from conftest import listing, llama_like, load_dir, save_ckpt

from pastkit import SkillVector, inject
from pastkit.cli import main


def test_extract_matches_direct_difference(trio, tmp_path):
    sft_dir, rl_dir, _, sft, rl, _ = trio
    v = SkillVector.extract(rl_dir, sft_dir)
    v.save(tmp_path / "v.safetensors")
    saved = SkillVector.load(tmp_path / "v.safetensors")
    for k in sft:
        assert torch.equal(saved.get(k), rl[k] - sft[k]), k
    assert saved.meta["n_params"] == sum(t.numel() for t in sft.values())
    assert saved.meta["rl"]["path"] == str(rl_dir)
    assert saved.meta["dtype"] == "float32"


@pytest.mark.parametrize("lam", [1.0, 0.5, -2.0])
def test_inject_matches_direct_sum_and_keeps_sharding(trio, tmp_path, lam):
    sft_dir, rl_dir, target_dir, sft, rl, target = trio
    v = SkillVector.extract(rl_dir, sft_dir)
    out = inject(target_dir, v, tmp_path / "out", lam=lam)
    got = load_dir(out)
    for k in target:
        assert torch.equal(got[k], target[k] + lam * (rl[k] - sft[k])), k
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(p.name for p in target_dir.glob("*.safetensors"))
    index = "model.safetensors.index.json"
    assert (out / index).read_text() == (target_dir / index).read_text()
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    prov = json.loads((out / "pastkit_provenance.json").read_text())
    assert prov["lam"] == lam and prov["vector"]["formula"] == "rl - sft"


def test_bf16_target_arithmetic_in_fp32_written_in_bf16(tmp_path):
    sft, target = llama_like(1), llama_like(2, dtype=torch.bfloat16)
    rl = {k: v + 1e-3 * torch.randn_like(v) for k, v in sft.items()}
    v = SkillVector.extract(save_ckpt(tmp_path / "rl", rl), save_ckpt(tmp_path / "sft", sft))
    out = inject(save_ckpt(tmp_path / "t", target, shards=2), v, tmp_path / "out", lam=1.0)
    got = load_dir(out)
    for k in target:
        assert got[k].dtype == torch.bfloat16
        assert torch.equal(got[k], (target[k].float() + (rl[k] - sft[k])).to(torch.bfloat16)), k


def test_vector_algebra(trio, tmp_path):
    sft_dir, rl_dir, target_dir, sft, rl, _ = trio
    v = SkillVector.extract(rl_dir, sft_dir)
    w = SkillVector.extract(sft_dir, target_dir)
    k = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal((v + w).get(k), v.get(k) + w.get(k))
    assert torch.equal(sum([v, w]).get(k), v.get(k) + w.get(k))
    assert torch.equal((-v).get(k), -v.get(k))
    assert torch.equal((2 * v).get(k), 2 * v.get(k)) and torch.equal((v * 2).get(k), 2 * v.get(k))
    assert torch.count_nonzero((v - v).get(k)) == 0
    (0.5 * (v + w)).save(tmp_path / "avg.safetensors")
    back = SkillVector.load(tmp_path / "avg.safetensors")
    assert torch.allclose(back.get(k), 0.5 * (v.get(k) + w.get(k)))
    assert "0.5" in back.meta["formula"]
    with pytest.raises(ValueError, match="finite"):
        v * float("nan")


def test_bf16_vector_storage(trio, tmp_path):
    sft_dir, rl_dir, _, sft, rl, _ = trio
    SkillVector.extract(rl_dir, sft_dir).save(tmp_path / "v.safetensors", dtype=torch.bfloat16)
    got = SkillVector.load(tmp_path / "v.safetensors")
    k = "model.norm.weight"
    assert got.source.dtype(k) == torch.bfloat16
    assert torch.equal(got.get(k), (rl[k] - sft[k]).to(torch.bfloat16).float())


def test_cli_extract_inject_on_tiny_model(tiny_model, tmp_path, capsys):
    """The real tiny Llama (sharded, with tokenizer): extract, inject, and the result still loads."""
    from transformers import AutoModelForCausalLM

    base = load_dir(tiny_model)
    rl = {k: t + 0.01 for k, t in base.items()}
    rl_dir = tmp_path / "rl"
    import shutil
    shutil.copytree(tiny_model, rl_dir)
    for f in rl_dir.glob("*.safetensors"):
        from safetensors.torch import load_file, save_file
        save_file({k: rl[k] for k in load_file(f)}, f, {"format": "pt"})
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(tiny_model),
                 "-o", str(tmp_path / "v.safetensors")]) == 0
    assert main(["vector", "inject", "--model", str(tiny_model), "--vector", str(tmp_path / "v.safetensors"),
                 "--lam", "1", "-o", str(tmp_path / "out")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    sd = merged.state_dict()
    for k in base:
        assert torch.allclose(sd[k], rl[k], atol=1e-6), k
    # a second inject to the same place is refused without --force, and nothing changes
    before = (tmp_path / "out" / "model.safetensors.index.json").stat().st_mtime_ns
    assert main(["vector", "inject", "--model", str(tiny_model), "--vector", str(tmp_path / "v.safetensors"),
                 "-o", str(tmp_path / "out")]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors.index.json").stat().st_mtime_ns == before
    assert main(["vector", "inject", "--model", str(tiny_model), "--vector", str(tmp_path / "v.safetensors"),
                 "--lam", "0", "-o", str(tmp_path / "out"), "--force"]) == 0
    assert torch.equal(load_dir(tmp_path / "out")["model.norm.weight"], base["model.norm.weight"])
    assert listing(tmp_path) == ["out", "rl", "v.safetensors"]


def test_extracting_identical_checkpoints_warns_that_the_vector_is_zero(trio, tmp_path, capsys):
    sft_dir, *_ = trio
    out = str(tmp_path / "v.safetensors")
    assert main(["vector", "extract", "--rl", str(sft_dir), "--sft", str(sft_dir), "-o", out]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "exactly zero" in captured.err and "‖v‖=0" in captured.out
    v = SkillVector.extract(trio[1], sft_dir)
    assert f"‖v‖={v.norm():.4g}" in repr(v) and v.norm() > 0


def test_random_control_has_the_norm_of_v_in_every_tensor_and_no_direction_of_its(trio, tmp_path):
    sft_dir, rl_dir, *_ = trio
    v = SkillVector.extract(rl_dir, sft_dir)
    r, again, other = v.random_like(0), v.random_like(0), v.random_like(1)
    assert r.keys() == v.keys()
    for k in v.keys():
        a, b = v.get(k), r.get(k)
        assert torch.allclose(b.norm(), a.norm(), rtol=1e-5), k
        assert torch.equal(b, again.get(k)) and not torch.equal(b, other.get(k))  # seeded, per seed
        if a.numel() > 100:
            cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
            assert abs(float(cos)) < 0.2, k  # a random direction: nearly orthogonal to v
    r.save(tmp_path / "r.safetensors")
    assert SkillVector.load(tmp_path / "r.safetensors").meta["formula"] == "random like (rl - sft), seed 0"


def test_group_scaling_multiplies_each_module_group_by_its_own_lambda(trio):
    from pastkit.skill_vector import module_group

    sft_dir, rl_dir, *_ = trio
    v = SkillVector.extract(rl_dir, sft_dir)
    scales = {"attention": 0.5, "mlp": 2.0, "rest": 0.0}
    g = v.scaled_by_group(scales)
    groups = {module_group(k) for k in v.keys()}
    assert groups == {"attention", "mlp", "rest"}  # the fixture has all three
    for k in v.keys():
        assert torch.equal(g.get(k), v.get(k) * scales[module_group(k)]), k
    assert module_group("model.layers.0.self_attn.q_proj.weight") == "attention"
    assert module_group("model.layers.3.mlp.down_proj.weight") == "mlp"
    assert module_group("model.embed_tokens.weight") == module_group("model.norm.weight") == "rest"
    with pytest.raises(ValueError, match="exactly the groups"):
        v.scaled_by_group({"attention": 1.0})
