"""Every bad input gets a clear error naming the tensor, and leaves no output behind."""

import json
import math

import pytest
import torch
from conftest import listing, llama_like, load_dir, save_ckpt

from pastkit import CheckpointError, SkillVector, inject


def _no_output(tmp_path, *expected):
    assert listing(tmp_path) == sorted(expected)


def test_different_architecture_names_the_missing_tensor(tmp_path):
    a = save_ckpt(tmp_path / "a", llama_like(1, layers=2))
    b = save_ckpt(tmp_path / "b", llama_like(1, layers=3))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\."):
        SkillVector.extract(a, b).save(tmp_path / "v.safetensors")
    c = save_ckpt(tmp_path / "c", llama_like(1), arch="Qwen2ForCausalLM")
    with pytest.raises(CheckpointError, match="Qwen2ForCausalLM"):
        SkillVector.extract(a, c)
    _no_output(tmp_path, "a", "b", "c")


def test_shape_mismatch_names_the_tensor(tmp_path):
    a = save_ckpt(tmp_path / "a", llama_like(1, d=16))
    b = save_ckpt(tmp_path / "b", llama_like(1, d=8))
    want = r"model\.embed_tokens\.weight. has shape \(32, 16\) in rl .*/a.* but \(32, 8\) in sft .*/b"
    with pytest.raises(CheckpointError, match=want):
        SkillVector.extract(a, b)


def test_extra_tensor_in_vector_is_refused_by_inject(tmp_path):
    src = llama_like(1, layers=3)
    v = SkillVector.extract(save_ckpt(tmp_path / "rl", src), save_ckpt(tmp_path / "sft", src))
    target = save_ckpt(tmp_path / "t", llama_like(2, layers=2))
    with pytest.raises(CheckpointError, match=r"no tensor 'model\.layers\.2\."):
        inject(target, v, tmp_path / "out")
    _no_output(tmp_path, "rl", "sft", "t")


def test_vocab_mismatch_refused_by_default_overlap_on_request(tmp_path):
    big, small = llama_like(1, vocab=40), llama_like(1, vocab=32)
    rl = {k: t + 1.0 for k, t in small.items()}
    v = SkillVector.extract(save_ckpt(tmp_path / "rl", rl), save_ckpt(tmp_path / "sft", small))
    target = save_ckpt(tmp_path / "t", big)
    want = r"embed_tokens.*40 vocabulary rows in the model .* but 32 in the skill vector.*overlap"
    with pytest.raises(CheckpointError, match=want):
        inject(target, v, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    got = load_dir(inject(target, v, tmp_path / "out", vocab="overlap"))["model.embed_tokens.weight"]
    want = big["model.embed_tokens.weight"].clone()
    want[:32] += 1.0
    assert torch.equal(got, want)  # shared rows get the skill delta, the 8 extra rows are unchanged


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_tensor_and_leave_nothing(trio, tmp_path, bad):
    sft_dir, rl_dir, _, sft, _, target = trio
    target = dict(target)
    target["model.layers.1.mlp.down_proj.weight"][3, 3] = bad  # late in the last shard: fails mid-write
    bad_target = save_ckpt(tmp_path / "bad", target, shards=3)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight.*non-finite"):
        inject(bad_target, SkillVector.extract(rl_dir, sft_dir), tmp_path / "out")
    _no_output(tmp_path, "bad", "rl", "sft", "target")
    with pytest.raises(CheckpointError, match="non-finite"):
        SkillVector.extract(bad_target, sft_dir).save(tmp_path / "v.safetensors")
    _no_output(tmp_path, "bad", "rl", "sft", "target")


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), "one"])
def test_non_finite_lambda(trio, tmp_path, lam):
    sft_dir, rl_dir, target_dir, *_ = trio
    with pytest.raises(ValueError, match="lam must be"):
        inject(target_dir, SkillVector.extract(rl_dir, sft_dir), tmp_path / "out", lam=lam)
    assert not (tmp_path / "out").exists()


def test_truncated_shard_is_reported_before_any_output(trio, tmp_path):
    sft_dir, rl_dir, *_ = trio
    shard = sorted(rl_dir.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated: tensor"):
        SkillVector.extract(rl_dir, sft_dir)


def test_pickle_and_garbage_files_are_never_loaded(tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="never unpickles"):
        SkillVector.extract(tmp_path / "pickled", tmp_path / "pickled")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "model.safetensors").write_bytes(b"\x80\x04" + b"x" * 100)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        SkillVector.extract(tmp_path / "garbage", tmp_path / "garbage")
    with pytest.raises(CheckpointError, match="no such file"):
        SkillVector.extract(tmp_path / "missing", tmp_path / "garbage")


def test_existing_output_needs_force(trio, tmp_path):
    sft_dir, rl_dir, target_dir, *_ = trio
    v = SkillVector.extract(rl_dir, sft_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        inject(target_dir, v, tmp_path / "out")
    with pytest.raises(FileExistsError, match="not written by pastkit"):  # force replaces only the kit's own outputs
        inject(target_dir, v, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
    inject(target_dir, v, tmp_path / "mine")
    inject(target_dir, v, tmp_path / "mine", lam=0.5, force=True)  # the kit wrote it: force replaces it
    assert json.loads((tmp_path / "mine" / "pastkit_provenance.json").read_text())["lam"] == 0.5
    (tmp_path / "v.safetensors").write_text("old")
    with pytest.raises(FileExistsError):
        v.save(tmp_path / "v.safetensors")
    assert math.isclose(len(v.keys()), len(load_dir(target_dir)))
