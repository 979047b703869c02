"""A peft LoRA adapter dir is exactly the dense ΔW peft's own merge_and_unload adds."""

import pytest
import torch
from conftest import load_dir

from pastkit import SkillVector
from pastkit.checkpoint import LoraAdapter
from pastkit.skill_vector import open_model


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_delta_equals_peft_merge(tiny_model, tmp_path, rslora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                     use_rslora=rslora, init_lora_weights=False,  # random B: a non-zero ΔW to compare
                     rank_pattern={"down_proj": 2}, alpha_pattern={"up_proj": 3})
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    base = load_dir(tiny_model)

    dense = open_model(tmp_path / "adapter", base=tiny_model)
    assert len(LoraAdapter(tmp_path / "adapter").keys()) == 2 * 4  # 2 layers × 4 target modules
    changed = 0
    for k in base:
        ours = dense.get(k).float()
        assert torch.allclose(ours, merged[k], atol=1e-6, rtol=0), k
        changed += not torch.equal(merged[k], base[k])
    assert changed == 8

    # adapter − adapter needs no base: v = ΔW_rl − ΔW_sft
    v = SkillVector.extract(tmp_path / "adapter", tmp_path / "adapter")
    assert all(torch.count_nonzero(v.get(k)) == 0 for k in v.keys())
    # adapter vs dense: base + ΔW − base == ΔW
    v = SkillVector.extract(tmp_path / "adapter", tiny_model, base=tiny_model)
    k = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(v.get(k), merged[k] - base[k], atol=1e-6)


def test_adapter_without_base_is_refused(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pastkit import CheckpointError
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                                LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = (tmp_path / "adapter" / "adapter_config.json")
    cfg.write_text(cfg.read_text().replace(str(tiny_model), "/nonexistent/base"))
    with pytest.raises(CheckpointError, match="needs its base model"):
        SkillVector.extract(tmp_path / "adapter", tiny_model)
