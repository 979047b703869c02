"""Per-tensor cosine between two updates equals a direct computation; heatmap and CLI write their files."""

import math

import pandas as pd
import torch
from conftest import llama_like, save_ckpt

from pastkit.cli import main
from pastkit.orthogonality import conclusion, cosine_between, heatmap, locate, summarize


def test_cosine_table_matches_direct_computation(tmp_path):
    torch.manual_seed(0)
    base = llama_like(0)
    da = {k: torch.randn_like(t) for k, t in base.items()}
    db = {k: torch.randn_like(t) for k, t in base.items()}
    db["model.layers.0.self_attn.q_proj.weight"] = 3 * da["model.layers.0.self_attn.q_proj.weight"]
    db["model.layers.1.mlp.down_proj.weight"] = -da["model.layers.1.mlp.down_proj.weight"]
    b = save_ckpt(tmp_path / "base", base)
    a_dir = save_ckpt(tmp_path / "a", {k: base[k] + da[k] for k in base}, shards=2)
    b_dir = save_ckpt(tmp_path / "b", {k: base[k] + db[k] for k in base}, shards=3)
    table = cosine_between(a_dir, b_dir, base=b).set_index("tensor")
    for k in base:
        x, y = (a_dir_t := da[k].double()), db[k].double()
        want = float((x * y).sum() / (x.norm() * y.norm()))
        ta = (base[k] + da[k]) - base[k]  # what the checkpoint delta really is in fp32
        tb = (base[k] + db[k]) - base[k]
        exact = float((ta.double() * tb.double()).sum() / (ta.double().norm() * tb.double().norm()))
        assert abs(table.loc[k, "cos"] - exact) < 1e-7, (k, table.loc[k, "cos"] - exact)
        assert abs(table.loc[k, "cos"] - want) < 1e-4
        assert table.loc[k, "random_baseline"] == 1 / math.sqrt(a_dir_t.numel())
    assert math.isclose(table.loc["model.layers.0.self_attn.q_proj.weight", "cos"], 1.0, rel_tol=1e-5)
    assert math.isclose(table.loc["model.layers.1.mlp.down_proj.weight", "cos"], -1.0, rel_tol=1e-5)
    assert table.loc["model.layers.1.mlp.down_proj.weight", "module"] == "down"
    assert table.loc["model.layers.1.post_attention_layernorm.weight", "module"] == "mlp_norm"
    s = summarize(table.reset_index(), "a vs b")
    assert s["max_abs_cos"] > 0.999 and s["tensors"] == len(base)


def test_locate_names():
    assert locate("model.layers.12.self_attn.k_proj.weight") == (12, "k")
    assert locate("model.layers.3.self_attn.q_proj.bias") == (3, "q.bias")
    assert locate("model.embed_tokens.weight") == (None, "embed")
    assert locate("model.norm.weight") == (None, "final_norm")


def test_cli_cosine_writes_csv_and_heatmap(tmp_path):
    base = llama_like(0)
    b = save_ckpt(tmp_path / "base", base)
    a = save_ckpt(tmp_path / "a", {k: t + torch.randn_like(t) for k, t in base.items()})
    c = save_ckpt(tmp_path / "c", {k: t + torch.randn_like(t) for k, t in base.items()})
    assert main(["cosine", "--base", str(b), str(a), str(c), "-o", str(tmp_path / "t.csv"),
                 "--heatmap", str(tmp_path / "h.png")]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert len(table) == len(base) and table["cos"].abs().max() < 0.5
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    # two saved vectors are deltas already: no base needed
    assert main(["vector", "extract", "--rl", str(a), "--sft", str(b), "-o", str(tmp_path / "va.safetensors")]) == 0
    assert main(["cosine", str(tmp_path / "va.safetensors"), str(tmp_path / "va.safetensors"),
                 "-o", str(tmp_path / "self.csv")]) == 0
    assert (pd.read_csv(tmp_path / "self.csv")["cos"] - 1).abs().max() < 1e-5


def test_heatmap_axes(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    rows = [{"tensor": f"model.layers.{i}.mlp.{m}_proj.weight", "layer": i, "module": m, "n": 100,
             "norm_a": 1.0, "norm_b": 1.0, "cos": 0.1 * i, "random_baseline": 0.1}
            for i in range(3) for m in ("up", "gate")]
    ax = heatmap(pd.DataFrame(rows), "test")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gate", "up"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]


def test_heatmap_of_undefined_cosines_has_a_finite_scale(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    rows = [{"tensor": f"model.layers.{i}.mlp.up_proj.weight", "layer": i, "module": "up", "n": 100,
             "norm_a": 1.0, "norm_b": 0.0, "cos": float("nan"), "random_baseline": 0.1} for i in range(2)]
    ax = heatmap(pd.DataFrame(rows), "all undefined")
    lo, hi = ax.collections[0].get_clim()
    assert (lo, hi) == (-1.0, 1.0) and "2 tensors with a zero delta" in ax.get_title()


def test_times_random_is_one_for_unrelated_directions():
    from pastkit.orthogonality import times_random
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(200):
        a, b = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
        rows.append({"cos": float(a @ b / (a.norm() * b.norm())), "random_baseline": 1 / math.sqrt(4096)})
    assert 0.85 < times_random(pd.DataFrame(rows)) < 1.15


def test_conclusion_names_the_missing_control_rather_than_a_missing_cosine():
    """One source round (ToolBench): ΔSFT vs ΔRL is defined, the SFT-vs-SFT control is not; say exactly that."""
    row = dict(tensors=4, mean_abs_cos=0.02, max_abs_cos=0.1, random_baseline=0.01, zero_delta_tensors=0)
    one_round = pd.DataFrame([{**row, "pair": "ΔSFT1 vs ΔRL1", "times_random": 7.0}])
    text = conclusion(one_round)
    assert "No SFT-vs-SFT control" in text and "No ΔSFT-vs-ΔRL cosine" not in text
    two_rounds = pd.concat([one_round, pd.DataFrame([{**row, "pair": "ΔSFT1 vs ΔSFT2", "times_random": 30.0}])])
    assert "as the paper claims" in conclusion(two_rounds)
    undefined = one_round.assign(zero_delta_tensors=4, times_random=float("nan"))
    assert "No ΔSFT-vs-ΔRL cosine is defined" in conclusion(undefined)
