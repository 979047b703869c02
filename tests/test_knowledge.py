"""Knowledge SFT batching: records of similar length share a batch, and every record is trained once per epoch."""

import sys

import pytest
import torch

from pastkit import knowledge
from pastkit.knowledge import LengthBatches, SFTSpec, train_sft


def batches_of(sampler, batch):
    order = list(sampler)
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def test_length_batches_group_similar_lengths_and_cover_every_record_once():
    lengths = [int(x) for x in torch.randint(5, 400, (42,), generator=torch.Generator().manual_seed(1))]
    sampler = LengthBatches(lengths, batch=8, seed=0)
    epoch1, epoch2 = batches_of(sampler, 8), batches_of(sampler, 8)
    for epoch in (epoch1, epoch2):
        assert sorted(i for b in epoch for i in b) == list(range(42))
        padded = sum(len(b) * max(lengths[i] for i in b) for b in epoch)
        ranked = sorted(lengths)  # the least padding any cut into batches of 8 can reach
        floor = sum(len(ranked[i:i + 8]) * max(ranked[i:i + 8]) for i in range(0, 42, 8))
        assert padded <= floor + 8 * 400 // 10  # within a tenth of one long batch of that floor
        assert len(epoch[-1]) == 42 % 8  # the short batch is last, so the DataLoader's cuts match the batches
    assert epoch1 != epoch2  # a new batch order each epoch
    assert batches_of(LengthBatches(lengths, 8, seed=0), 8) == epoch1  # and the same one for the same seed


def test_train_sft_batches_by_length(tiny_model, tmp_path, monkeypatch):
    seen = []
    iterate = LengthBatches.__iter__

    def recording(self):
        order = list(iterate(self))
        seen.append([self.lengths[i] for i in order])
        return iter(order)

    monkeypatch.setattr(knowledge.LengthBatches, "__iter__", recording)
    records = [{"text": " ".join(["word"] * n)} for n in (3, 40, 4, 38, 5, 41, 2, 39)]
    train_sft(tiny_model, records, tmp_path / "sft", SFTSpec(1, 1e-3, 4, 1, 128), seed=0, log=lambda *_: None)
    assert len(seen) == 1
    first, second = seen[0][:4], seen[0][4:]
    assert max(first) < min(second) or max(second) < min(first)  # the short records together, the long together


def test_megabatches_batching_uses_transformers_sampler(tiny_model, tmp_path, monkeypatch):
    """ToolBench's cpu setting: transformers' group_by_length, not LengthBatches (chosen on Movies, README)."""
    monkeypatch.setattr(knowledge.LengthBatches, "__iter__", lambda self: (_ for _ in ()).throw(AssertionError))
    records = [{"text": " ".join(["word"] * n)} for n in (3, 40, 4, 38)]
    summary = train_sft(tiny_model, records, tmp_path / "sft", SFTSpec(1, 1e-3, 2, 1, 128, batching="megabatches"),
                        seed=0, log=lambda *_: None)
    assert summary["steps"] == 2 and summary["spec"]["batching"] == "megabatches"


def test_unknown_batching_is_refused():
    with pytest.raises(ValueError, match="batching='shuffled'"):
        SFTSpec(1, 1e-3, 2, 1, 128, batching="shuffled")


def test_cpu_bf16_trains_in_bf16_autocast_and_saves_fp32_weights(tiny_model, tmp_path, monkeypatch):
    """`cpu_bf16`: the trainer runs in accelerate's bf16 mixed precision on the CPU; the saved model stays fp32."""
    from conftest import load_dir
    from transformers import Trainer

    from pastkit.training import autocast, device_args

    assert device_args(True)["bf16"] is True and device_args()["bf16"] is False
    x, lin = torch.randn(2, 4), torch.nn.Linear(4, 4)
    with autocast(True):
        assert lin(x).dtype == torch.bfloat16
    with autocast(False):
        assert lin(x).dtype == torch.float32
    seen = []
    step = Trainer.training_step

    def recording(self, *args, **kwargs):
        seen.append(self.accelerator.mixed_precision)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", recording)
    records = [{"text": "The lighthouse on Varn island is painted green."}] * 4
    summary = train_sft(tiny_model, records, tmp_path / "sft", SFTSpec(2, 1e-3, 2, 1, 64, cpu_bf16=True), seed=0,
                        log=lambda *_: None)
    assert seen and set(seen) == {"bf16"} and summary["spec"]["cpu_bf16"] is True
    assert summary["loss_fell"]
    assert {t.dtype for t in load_dir(tmp_path / "sft").values()} == {torch.float32}


def test_training_keeps_freed_memory_while_memory_lasts(monkeypatch):
    """On a CPU, training raises glibc's thresholds, gives memory back when the machine runs short, restores them."""
    from pastkit import training

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim",))
            return 1

    monkeypatch.setattr(training, "_glibc", lambda: FakeLibc())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (keep,) = training.memory_callbacks()
    keep.on_train_begin(None, None, None)
    assert calls == [("mallopt", p, v) for p, v in training._KEEP.items()]
    for short in (False, True):
        calls.clear()
        monkeypatch.setattr(training, "_memory_short", lambda s=short: s)
        keep.on_step_end(None, None, None)
        assert calls == ([("trim",)] if short else [])
    calls.clear()
    keep.on_train_end(None, None, None)
    assert calls == [("mallopt", p, v) for p, v in training._AFTER.items()] + [("trim",)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training.memory_callbacks() == []


def test_glibc_is_found_on_linux():
    import platform

    from pastkit import training

    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert training._glibc() is not None and training._memory_short() in (True, False)
