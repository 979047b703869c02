"""Are two parameter updates orthogonal? (paper Sec. 3.2, Fig. 2; control in Appendix B, Fig. 4)

For every tensor both deltas change, the Frobenius cosine ⟨ΔA, ΔB⟩_F / (‖ΔA‖_F‖ΔB‖_F), with norms and sizes,
in one streaming pass. Beside each cosine stands the random-direction baseline 1/√n: the standard deviation
of the cosine between two independent random directions in n dimensions.

One definition of "× random" is used everywhere (tables, titles, notebook text): the mean over tensors of
|cos|·√n, divided by √(2/π) ≈ 0.80, which is the expected |cos|·√n of two unrelated directions. So ×random
= 1 is exactly what unrelated directions give, 3 means three times as aligned as chance, and "near zero"
only means something relative to it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from .checkpoint import TensorSource, check_finite
from .outputs import OutputError, atomic_output, check_separate
from .places import in_repo
from .skill_vector import inputs_of, open_delta
from .training import interactive

# Column order of the heatmap: attention, MLP, then the two per-layer norms (Llama/Qwen naming).
MODULE_ORDER = ["q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm"]
_MODULE_ALIASES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm",
                   "embed_tokens": "embed", "lm_head": "lm_head", "norm": "final_norm"}


def locate(name: str) -> tuple[int | None, str]:
    """(layer index or None, short module name) for a parameter name like model.layers.3.mlp.up_proj.weight."""
    m = re.search(r"layers\.(\d+)\.", name)
    parts = name.removesuffix(".weight").removesuffix(".bias").split(".")
    module = _MODULE_ALIASES.get(parts[-1], parts[-1].removesuffix("_proj"))
    if name.endswith(".bias"):
        module += ".bias"
    return (int(m.group(1)) if m else None), module


def cosine_table(delta_a: TensorSource, delta_b: TensorSource) -> pd.DataFrame:
    """One row per tensor both deltas hold: layer, module, n, ‖ΔA‖, ‖ΔB‖, cos, random baseline 1/√n."""
    b_keys = set(delta_b.keys())
    common = [k for k in delta_a.keys() if k in b_keys]
    if not common:
        raise ValueError("the two deltas share no tensor names; are they from the same architecture?")
    rows = []
    for name in tqdm(common, desc="cosine", unit="tensor", leave=False, disable=not interactive()):
        a, b = delta_a.get(name).float(), delta_b.get(name).float()
        if a.shape != b.shape:
            raise ValueError(f"tensor {name!r}: delta shapes differ, {tuple(a.shape)} in A vs {tuple(b.shape)} in B")
        for side, t, src in (("A", a, delta_a), ("B", b, delta_b)):
            check_finite(name, t, inputs_of(src), f"delta {side}")
        dot = (a * b).sum(dtype=torch.float64).item()
        na = a.pow(2).sum(dtype=torch.float64).sqrt().item()
        nb = b.pow(2).sum(dtype=torch.float64).sqrt().item()
        layer, module = locate(name)
        n = a.numel()
        rows.append({"tensor": name, "layer": layer, "module": module, "n": n, "norm_a": na, "norm_b": nb,
                     "cos": dot / (na * nb) if na > 0 and nb > 0 else float("nan"),
                     "random_baseline": 1 / math.sqrt(n)})
    return pd.DataFrame(rows)


def cosine_between(a, b, base=None, vocab: str = "error") -> pd.DataFrame:
    """cosine_table for two fine-tuned models (with their base) or two deltas (vectors or adapters)."""
    return cosine_table(open_delta(a, base, vocab), open_delta(b, base, vocab))


def save_cosine(a, b, out, base=None, heatmap_png=None, title: str = "cos(ΔA, ΔB)", vocab: str = "error",
                force: bool = False) -> tuple[pd.DataFrame, dict]:
    """`cosine_between(a, b, base)` written to the CSV `out` (and its heatmap to `heatmap_png`), under the kit's
    write rules (`outputs`), checked before the computation; returns the table and its `summarize` line.

    Every tensor unchanged on one side (no cosine anywhere) is an error, not an empty table."""
    inputs = [a, b, base]
    outs = [Path(out)] + ([Path(heatmap_png)] if heatmap_png else [])
    if len(outs) == 2 and outs[0].resolve() == outs[1].resolve():
        raise ValueError("the table and the heatmap name the same file")
    for path in outs:  # before the (long) computation, not after it
        check_separate(path, inputs)
        if (path.exists() or path.is_symlink()) and not force:
            raise OutputError(f"{path} exists; pass force=True (CLI: --force) to replace it")
    table = cosine_between(a, b, base=base, vocab=vocab)
    summary = summarize(table, title)
    if summary["zero_delta_tensors"] == summary["tensors"]:
        raise ValueError(f"every tensor of A or B is unchanged (a zero delta): no cosine is defined ({a} vs {b})")
    prov = {"operation": "cosine", "a": str(a), "b": str(b), "base": str(base) if base else None}
    with atomic_output(outs[0], force=force, inputs=inputs, provenance=prov) as tmp:
        table.to_csv(tmp, index=False)
    if heatmap_png:
        import matplotlib.pyplot as plt
        ax = heatmap(table, title)
        with atomic_output(outs[1], force=force, inputs=inputs, provenance=prov) as tmp:
            ax.figure.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
        plt.close(ax.figure)
    return table, summary


UNRELATED = math.sqrt(2 / math.pi)  # E|cos|·√n for two independent random directions (|N(0,1)| mean)


def times_random(table: pd.DataFrame) -> float:
    """Mean |cos|·√n over tensors with a defined cosine, in units of what unrelated directions give (1.0)."""
    defined = table[table["cos"].notna()]
    return float((defined["cos"].abs() / defined["random_baseline"]).mean() / UNRELATED)


def summarize(table: pd.DataFrame, pair: str) -> dict:
    """One line per pair: mean and max |cos| over the tensors where it is defined, beside the random baseline.

    A tensor that one delta leaves exactly unchanged (e.g. RL whose rewards never differed within a group) has
    no direction, so no cosine: it is counted in `zero_delta_tensors`, not averaged in as a blank."""
    defined = table[table["cos"].notna()]
    c = defined["cos"].abs()
    return {"pair": pair, "tensors": len(table), "mean_abs_cos": c.mean(), "max_abs_cos": c.max(),
            "random_baseline": defined["random_baseline"].mean(),
            "times_random": times_random(table),
            "zero_delta_tensors": len(table) - len(defined)}


NORMS = ("attn_norm", "mlp_norm")  # 1-D per-layer tensors: shown apart from the weight matrices


def matrix_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Layers × weight-matrix modules of cos (norm vectors and biases left out)."""
    layered = table[table["layer"].notna() & ~table["module"].str.endswith(".bias") & ~table["module"].isin(NORMS)]
    grid = layered.pivot_table(index="layer", columns="module", values="cos", aggfunc="first", dropna=False)
    grid = grid[[m for m in MODULE_ORDER if m in grid.columns] + sorted(set(grid.columns) - set(MODULE_ORDER))]
    grid.index = grid.index.astype(int)
    return grid


def table_name(prefix: str, pair: str) -> str:
    """The file name (no suffix) of a pair's per-tensor table: "ΔSFT1 vs ΔRL1" -> cosine_squad_dsft1_vs_drl1."""
    return f"cosine_{prefix}_" + re.sub(r"[^a-z0-9]+", "_", pair.replace("Δ", "d").lower()).strip("_")


def load_pairs(folder: str | Path, notebook: str) -> dict[str, pd.DataFrame]:
    """The per-tensor cosine tables a notebook saved in a results folder (each with its pair in its provenance),
    in the order it saved them: what `explore` mode draws without training anything."""
    from .pages import records

    folder = in_repo(folder)
    found = {r["pair"]: pd.read_csv(folder / r["file"]) for r in records(folder, notebook)
             if r["file"].startswith("cosine_") and r["file"].endswith(".csv") and "pair" in r}
    if not found:
        raise FileNotFoundError(f"{folder} holds no per-tensor cosine tables of {notebook}: the reference run writes "
                                "them to figures/ (`make figures`); or name a results folder of your own run of it")
    return found


def shared_scale(*tables: pd.DataFrame) -> float:
    """One colour scale for panels meant to be compared (Fig. 2 beside its Fig. 4 control): the largest |cos| of
    their weight matrices. With a scale each, a control with cosines ten times smaller looks just as strong."""
    values = pd.concat([matrix_grid(t).abs().stack() for t in tables]).dropna()
    return float(values.max()) if len(values) and values.max() > 0 else 1.0


def heatmap(table: pd.DataFrame, title: str, ax=None, vmax: float | None = None):
    """Layers × modules heatmap of cos over the weight matrices (paper Fig. 2 style): a diverging colormap centred
    at 0. The per-layer norm vectors, whose cosines are far larger than the matrices' (a 576-entry vector against
    a 576 × 1536 matrix), would take the whole colour scale: their mean |cos| is given in the title instead.

    The colour scale is `vmax` (`shared_scale` for panels to compare) or the panel's own largest |cos|; tensors
    without a defined cosine (a zero delta) are grey and counted in the title, never a blank scale.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    grid = matrix_grid(table)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.7 * grid.shape[1], 1.2 + 0.28 * grid.shape[0]))
    lim = vmax if vmax and math.isfinite(vmax) else shared_scale(table)
    ax.set_facecolor("#bdbdbd")  # undefined cells (NaN) show as grey
    sns.heatmap(grid, ax=ax, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, annot=grid.shape[0] <= 12,
                fmt=".2f", cbar_kws={"label": "cosine similarity (weight matrices)"}, linewidths=0.3)
    undefined = int(table["cos"].isna().sum())
    note = f"; {undefined} tensors with a zero delta (grey, no cosine)" if undefined else ""
    norms = table[table["module"].isin(NORMS)]["cos"].abs().mean()
    norm_note = f"; norm vectors (not drawn) mean |cos| = {norms:.3g}" if pd.notna(norms) else ""
    ax.set_title(f"{title}\nmean |cos| = {table['cos'].abs().mean():.3g} over all tensors, ×random = "
                 f"{times_random(table):.2g} (1 = unrelated directions){norm_note}{note}", fontsize=9)
    ax.set_xlabel("weight matrix")
    ax.set_ylabel("layer")
    return ax


def conclusion(summary: pd.DataFrame) -> str:
    """The paper's orthogonality claims, checked in words against a summary table (rows from `summarize`)."""
    rows = summary.set_index("pair")
    lines = []
    for pair, r in rows.iterrows():
        if int(r.zero_delta_tensors) == int(r.tensors):
            lines.append(f"{pair}: undefined: one update is exactly zero in every tensor (nothing was learned).")
            continue
        zero = f", {int(r.zero_delta_tensors)} of {int(r.tensors)} tensors with a zero delta left out" \
            if r.zero_delta_tensors else ""
        lines.append(f"{pair}: mean |cos| = {r.mean_abs_cos:.3g}, ×random = {r.times_random:.2g}{zero}.")
    sft_rl = [p for p in rows.index if "ΔRL" in p and pd.notna(rows.loc[p, "times_random"])]
    if sft_rl:
        a = rows.loc[sft_rl, "times_random"].mean()
        if "ΔSFT1 vs ΔSFT2" in rows.index:
            b = rows.loc["ΔSFT1 vs ΔSFT2", "times_random"]
            lines.append(f"Knowledge vs skill updates (×random {a:.2g} on average) against two knowledge updates "
                         f"(×random {b:.2g}): the SFT-vs-SFT control is {b / a:.1f}× as aligned. "
                         + ("ΔSFT and ΔRL are the closer to orthogonal, as the paper claims."
                            if b > a else "This run does not support the paper's claim."))
        else:
            lines.append(f"No SFT-vs-SFT control here (it needs two knowledge updates, i.e. two source rounds), so "
                         f"×random {a:.2g} for knowledge vs skill can be read only against random directions (1), "
                         "not against two knowledge updates as the paper's control does.")
    elif any("ΔRL" in p for p in rows.index):
        lines.append("No ΔSFT-vs-ΔRL cosine is defined, so this run cannot test the orthogonality claim.")
    return "\n".join(lines)
