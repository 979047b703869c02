"""The skill vector v = θ_rl − θ_sft (paper Sec. 4.2) and its injection θ_T + λ·v.

A `SkillVector` is small and arithmetic, in the spirit of task_vectors: add, negate, scale, save, load,
apply. It is lazy: arithmetic builds a linear combination of tensor sources and nothing is read until
`save` or `apply_to` streams it one tensor at a time (see `checkpoint`). Arithmetic is done in fp32;
injected weights are written in the target model's dtype and keep its sharding and index file.

Vocabulary-size mismatches (e.g. Qwen2.5's 152064 padded rows vs a 151665-row checkpoint) are refused by
default. With vocab="overlap" the embedding/lm_head rows both sides share are combined and the target's
extra rows are left unchanged (they carry no skill delta: no source trained them).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from .checkpoint import (
    EMBEDDING_NAME,
    INDEX_FILE,
    SKILL_VECTOR_KEY,
    Checkpoint,
    CheckpointError,
    LoraAdapter,
    TensorSource,
    architecture_of,
    check_finite,
    is_adapter,
    read_json,
    source_file,
    write_safetensors,
)
from .outputs import atomic_output
from .training import interactive

VOCAB_POLICIES = ("error", "overlap")
FP32_MAX = torch.finfo(torch.float32).max
LAYER_INDEX = re.compile(r"\.\d+\.")  # the block number in a name such as model.layers.3.mlp.up_proj.weight
LAZY_NORM_LIMIT = 10**9  # repr computes the norm of an unsaved vector up to this many parameters (seconds on a CPU)


class DegenerateWarning(UserWarning):
    """A result that is formally valid but means nothing (a zero skill vector, a constant reward, ...)."""


def _finite_scalar(x, what: str) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {x}")
    if abs(x) > FP32_MAX:
        raise ValueError(f"{what} = {x:g} is outside float32's range (±{FP32_MAX:.3g}), in which weights and vectors "
                         "are combined")
    return x


def _row_overlap(name: str, a: tuple, b: tuple, vocab: str, what_a: str, what_b: str) -> tuple | None:
    """Shape both sides agree on, or an error naming the tensor and which side has which shape.

    Row-only differences of embeddings may overlap (vocab="overlap")."""
    if a == b:
        return a
    if len(a) == len(b) and a[1:] == b[1:] and EMBEDDING_NAME.search(name):
        if vocab == "overlap":
            return (min(a[0], b[0]),) + a[1:]
        raise CheckpointError(
            f"tensor {name!r} has {a[0]} vocabulary rows in {what_a} but {b[0]} in {what_b}; pass vocab='overlap' "
            "(CLI: --vocab overlap) to combine the shared rows and keep the extra ones unchanged")
    raise CheckpointError(f"tensor {name!r} has shape {a} in {what_a} but {b} in {what_b}")


class LinearCombination:
    """Σ cᵢ·sourceᵢ, evaluated per tensor in fp32.

    strict: every source must hold exactly the same tensors (dense checkpoints of one architecture).
    Otherwise sources may be sparse (LoRA deltas, sparse vectors): a missing tensor counts as zero.
    """

    def __init__(self, terms: list[tuple[float, TensorSource]], strict: bool, vocab: str = "error",
                 labels: list[str] | None = None):
        if vocab not in VOCAB_POLICIES:
            raise ValueError(f"vocab must be one of {VOCAB_POLICIES}, got {vocab!r}")
        self.terms = terms
        self._keysets = [set(src.keys()) for _, src in terms]
        self._shapes: dict[str, tuple] = {}
        names = [f"{label} ({src!r})" if label else repr(src) for label, (_, src) in
                 zip(labels or [None] * len(terms), terms)]
        first, first_keys = names[0], self._keysets[0]
        seen_in: dict[str, str] = {}
        for (_, src), keys, what in zip(terms, self._keysets, names):
            if strict and keys != first_keys:
                only_first, only_this = sorted(first_keys - keys), sorted(keys - first_keys)
                lists = [f"{len(only_first)} only in {first} (e.g. {only_first[:3]})" if only_first else "",
                         f"{len(only_this)} only in {what} (e.g. {only_this[:3]})" if only_this else ""]
                raise CheckpointError(f"different tensors: {'; '.join(x for x in lists if x)}; "
                                      "are these the same architecture?")
            for name in src.keys():
                shape = tuple(src.shape(name))
                self._shapes[name] = _row_overlap(name, self._shapes.get(name, shape), shape, vocab,
                                                  seen_in.get(name, what), what)
                seen_in.setdefault(name, what)

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        rows = self._shapes[name][0] if self._shapes[name] else None
        out = None
        for (coef, src), keys in zip(self.terms, self._keysets):
            if name in keys:
                t = src.get(name)
                t = t[:rows] if t.dim() else t
                if out is None:
                    out = t.float() * coef if coef != 1.0 or t.dtype != torch.float32 else t
                else:
                    out.add_(t, alpha=coef)
        return out if out is not None else torch.zeros(self._shapes[name])

    def inputs(self) -> list:
        """The checkpoints this combination reads, to name the culprit when a result is non-finite."""
        return [s for _, src in self.terms for s in inputs_of(src)]


class DenseWithAdapter:
    """base + LoRA ΔW: a peft adapter dir seen as the full fine-tuned model it stands for."""

    def __init__(self, base: Checkpoint, adapter: LoraAdapter):
        for name in adapter.keys():
            if name not in base.tensors:
                raise CheckpointError(f"{adapter!r}: adapts {name!r}, which base {base!r} does not have")
            if tuple(adapter.shape(name)) != tuple(base.shape(name)):
                raise CheckpointError(
                    f"{adapter!r}: ΔW for {name!r} is {adapter.shape(name)}, base has {base.shape(name)}")
        self.base, self.adapter = base, adapter
        self.path, self.config, self.shards = adapter.path, base.config, base.shards
        self.is_skill_vector = False
        self.architecture, self.dtype, self.tensors = base.architecture, base.dtype, base.tensors

    def __repr__(self):
        return f"{self.adapter!r} on {self.base!r}"

    def keys(self):
        return self.base.keys()

    def shape(self, name):
        return self.base.shape(name)

    def get(self, name):
        w = self.base.get(name)
        return w.float() + self.adapter.get(name) if name in self.adapter.keys() else w


def open_model(path, base=None) -> Checkpoint | DenseWithAdapter:
    """A full model from a checkpoint dir/file, or from a peft adapter dir plus its base model.

    A LoRA adapter without `base` uses the base model its adapter_config records, if that dir exists.
    A saved skill vector is refused: it is a delta, not a model."""
    if is_adapter(path):
        adapter = LoraAdapter(path)
        base = base or adapter.base_model
        if not base or not Path(base).exists():
            recorded = f" (its adapter_config names {adapter.base_model!r}, not found here)" if adapter.base_model \
                else ""
            raise CheckpointError(f"{path}: a LoRA adapter needs its base model{recorded}: pass base= "
                                  "(CLI: --base DIR)")
        return DenseWithAdapter(_model_checkpoint(base), adapter)
    return _model_checkpoint(path)


def _model_checkpoint(path) -> Checkpoint:
    ckpt = Checkpoint(path)
    if ckpt.is_skill_vector:
        raise CheckpointError(f"{path}: is a skill vector (saved by pastkit), not a model; "
                              "a model is expected here")
    return ckpt


def open_delta(path, base=None, vocab: str = "error") -> TensorSource:
    """ΔW of a fine-tuned model: adapter dirs are deltas already; dense models need base; files are vectors."""
    if is_adapter(path):
        return LoraAdapter(path)
    ckpt = Checkpoint(path)
    if ckpt.is_skill_vector:
        return ckpt  # a saved skill vector is itself a delta
    if base is None:
        raise CheckpointError(f"{path}: a dense checkpoint is weights, not a delta; pass its base model")
    return LinearCombination([(1.0, ckpt), (-1.0, _model_checkpoint(base))], strict=True, vocab=vocab,
                             labels=["model", "base"])


def inputs_of(source) -> list:
    """The checkpoints a tensor source reads (a combination's terms, or the source itself), to name a file at fault."""
    return source.inputs() if hasattr(source, "inputs") else [source]


def _paths(source) -> list[Path]:
    """Every file or dir a tensor source reads: what an output must stay apart from."""
    out = []
    for s in inputs_of(source):
        out.append(Path(s.path))
        if isinstance(s, DenseWithAdapter):
            out.append(Path(s.base.path))
    return out


def is_model_metadata(name: str) -> bool:
    """Files of a model dir that describe it (config, tokenizer, chat template, licence), not weights."""
    if name.endswith(".index.json") or name == "pastkit_provenance.json":
        return False
    return name.endswith((".json", ".txt", ".model", ".jinja", ".tiktoken", ".md")) or name.startswith(
        ("LICENSE", "NOTICE"))


def _describe(path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    cfg = read_json(cfg_file) if cfg_file.exists() else {}
    return {"path": str(path), "architecture": architecture_of(cfg, cfg_file),
            "model_type": cfg.get("model_type"), "adapter": is_adapter(path)}


class RandomLike:
    """A random direction with the Frobenius norm of `source` in every tensor (Gaussian, seeded per tensor name).

    The control a referee asks for: injected like v, does a vector of the same size but no learned direction
    help as much? Tensors that are zero in `source` stay zero."""

    def __init__(self, source: TensorSource, seed: int):
        self.source, self.seed = source, seed

    def keys(self) -> list[str]:
        return self.source.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def get(self, name: str) -> torch.Tensor:
        ref = self.source.get(name).float()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        r = torch.randn(tuple(ref.shape), generator=g)
        return r * (ref.norm() / r.norm()) if r.norm() > 0 else r

    def inputs(self) -> list:
        return inputs_of(self.source)


MODULE_GROUPS = ("attention", "mlp", "rest")


def module_group(name: str) -> str:
    """Which part of a transformer a tensor belongs to: "attention" (self_attn.*), "mlp" (mlp.*), or "rest"
    (embeddings, norms, the LM head): the groups a per-group λ scales (the paper's λ limitation)."""
    if ".self_attn." in name or ".attention." in name:
        return "attention"
    return "mlp" if ".mlp." in name else "rest"


class GroupScaled:
    """`source` with every tensor multiplied by the λ of its module group (`module_group`)."""

    def __init__(self, source: TensorSource, scales: dict[str, float]):
        if set(scales) != set(MODULE_GROUPS):
            raise ValueError(f"group scales need exactly the groups {MODULE_GROUPS}, got {sorted(scales)}")
        self.source, self.scales = source, {g: _finite_scalar(x, f"λ of {g}") for g, x in scales.items()}

    def keys(self) -> list[str]:
        return self.source.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def get(self, name: str) -> torch.Tensor:
        return self.source.get(name).float() * self.scales[module_group(name)]

    def inputs(self) -> list:
        return inputs_of(self.source)


class SkillVector:
    """A parameter delta with provenance. `v = SkillVector.extract(rl, sft)`; `v.apply_to(model, out, lam=1)`."""

    def __init__(self, source: TensorSource, meta: dict):
        self.source, self.meta = source, meta

    def __repr__(self):
        norm = self.meta.get("norm")
        if norm is None and self.numel() <= LAZY_NORM_LIMIT:
            norm = self.norm()
        shown = f"‖v‖={norm:.4g}" if norm is not None else "‖v‖ not computed yet (call .norm())"
        return (f"SkillVector({self.meta.get('formula', '?')}, {len(self.keys())} tensors, {self.numel():,} params, "
                f"{shown})")

    def norm(self) -> float:
        """Frobenius norm over all tensors (reads the vector once; cached in meta)."""
        if self.meta.get("norm") is None:
            total = sum(self.get(k).double().pow(2).sum().item() for k in self.keys())
            self.meta["norm"] = math.sqrt(total)
        return self.meta["norm"]

    @classmethod
    def extract(cls, rl, sft, base=None, vocab: str = "error") -> SkillVector:
        """v = θ_rl − θ_sft. Two adapters over one base need no base; a dense/adapter mix needs `base`."""
        if is_adapter(rl) and is_adapter(sft):
            source = LinearCombination([(1.0, LoraAdapter(rl)), (-1.0, LoraAdapter(sft))], strict=False)
        else:
            a, b = open_model(rl, base), open_model(sft, base)
            if a.architecture and b.architecture and a.architecture != b.architecture:
                raise CheckpointError(f"rl is {a.architecture} but sft is {b.architecture}: not the same model")
            source = LinearCombination([(1.0, a), (-1.0, b)], strict=True, vocab=vocab, labels=["rl", "sft"])
        rl_d = _describe(rl)
        meta = {"formula": "rl - sft", "rl": rl_d, "sft": _describe(sft), "base": str(base) if base else None,
                "architecture": rl_d["architecture"] or _describe(sft)["architecture"]}
        return cls(source, meta)

    @classmethod
    def load(cls, path) -> SkillVector:
        """A vector saved by `save` (or `pastkit vector extract`); any other safetensors file is refused."""
        ckpt = Checkpoint(path)
        if not ckpt.is_skill_vector:
            raise CheckpointError(f"{path}: not a skill vector (no pastkit metadata); is it a model? Make vectors "
                                  "with `pastkit vector extract` or SkillVector.save")
        try:
            meta = json.loads(ckpt.shards[0][2][SKILL_VECTOR_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its pastkit metadata is not JSON") from None
        return cls(ckpt, meta if isinstance(meta, dict) else {"formula": str(path)})

    def keys(self) -> list[str]:
        return self.source.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def get(self, name: str) -> torch.Tensor:
        return self.source.get(name).float()

    def numel(self) -> int:
        return sum(math.prod(self.shape(k)) for k in self.keys())

    def __add__(self, other: SkillVector) -> SkillVector:
        if not isinstance(other, SkillVector):
            return NotImplemented
        return SkillVector(LinearCombination([(1.0, self.source), (1.0, other.source)], strict=False),
                           {"formula": f"({self.meta.get('formula')}) + ({other.meta.get('formula')})",
                            "terms": [self.meta, other.meta], "architecture": self.meta.get("architecture")})

    def __radd__(self, other):
        return self if other == 0 else self.__add__(other)  # so sum([v1, v2]) works

    def __mul__(self, c) -> SkillVector:
        c = _finite_scalar(c, "scale")
        meta = {k: x for k, x in self.meta.items() if k != "norm"}
        return SkillVector(LinearCombination([(c, self.source)], strict=False),
                           {**meta, "formula": f"{c:g} * ({self.meta.get('formula')})"})

    __rmul__ = __mul__

    def __neg__(self) -> SkillVector:
        return self * -1.0

    def __sub__(self, other: SkillVector) -> SkillVector:
        return self + (-other)

    def random_like(self, seed: int = 0) -> SkillVector:
        """Same norm as this vector in every tensor, random direction (`RandomLike`)."""
        meta = {k: x for k, x in self.meta.items() if k not in ("norm", "formula")}
        formula = f"random like ({self.meta.get('formula')}), seed {seed}"
        return SkillVector(RandomLike(self.source, seed), {**meta, "formula": formula})

    def scaled_by_group(self, scales: dict[str, float]) -> SkillVector:
        """Each module group's part of this vector times its own λ (`GroupScaled`): {"attention", "mlp", "rest"}."""
        meta = {k: x for k, x in self.meta.items() if k not in ("norm", "formula")}
        formula = f"({self.meta.get('formula')}) scaled per group {scales}"
        return SkillVector(GroupScaled(self.source, scales), {**meta, "formula": formula})

    def save(self, path, dtype: torch.dtype = torch.float32, force: bool = False) -> Path:
        """Stream the vector to one safetensors file with provenance metadata (fp32 by default: exact)."""
        names = self.keys()
        meta = {**{k: x for k, x in self.meta.items() if k != "norm"},  # the norm of the stored dtype comes after
                "dtype": str(dtype).removeprefix("torch."), "n_tensors": len(names),
                "n_params": self.numel(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "pastkit_version": __version__}
        bar = tqdm(total=len(names), desc="skill vector", unit="tensor", leave=False, disable=not interactive())
        sq = [0.0]

        def produce(name):
            bar.update()
            t = check_finite(name, self.get(name).to(dtype), inputs_of(self.source))
            sq[0] += t.double().pow(2).sum().item()
            return t

        with atomic_output(path, force, inputs=_paths(self.source)) as tmp:
            write_safetensors(tmp, [(n, dtype, self.shape(n)) for n in names], produce,
                              {SKILL_VECTOR_KEY: json.dumps(meta), "format": "pt"})
        bar.close()
        self.meta = {**meta, "norm": math.sqrt(sq[0])}
        if sq[0] == 0:
            warnings.warn(f"{path}: the skill vector is exactly zero ({meta.get('formula')}): the two models are "
                          "identical, so injecting it changes nothing", DegenerateWarning, stacklevel=2)
        return Path(path)

    def apply_to(self, model, out, lam: float = 1.0, base=None, force: bool = False,
                 vocab: str = "error") -> Path:
        """Write θ_model + lam·v to `out` (see `inject`)."""
        return inject(model, self, out, lam=lam, base=base, force=force, vocab=vocab)


def add_scaled_(w: torch.Tensor, delta: torch.Tensor, lam: float) -> torch.Tensor:
    """w + λ·δ in fp32 on the rows both share (vocab="overlap"), cast back to w's dtype.

    In place when w is already fp32 (a fresh tensor in `inject`, a model parameter in `add_vector_`)."""
    merged = w.float()
    if merged.dim():
        rows = min(merged.shape[0], delta.shape[0])
        merged[:rows].add_(delta[:rows], alpha=lam)
    else:
        merged.add_(delta, alpha=lam)
    return merged.to(w.dtype)


def inject(model, vector: SkillVector | str | os.PathLike, out, lam: float = 1.0, base=None,
           force: bool = False, vocab: str = "error") -> Path:
    """θ_final = θ_T + λ·v (paper Sec. 4.2), streamed shard by shard into a new model dir.

    Tensors the vector does not hold are copied unchanged; a vector tensor the model lacks is an error.
    The output keeps the model's shard files and index, its config and tokenizer, and records provenance
    in pastkit_provenance.json. Nothing is left at `out` if anything fails.
    """
    lam = _finite_scalar(lam, "lam")
    if vocab not in VOCAB_POLICIES:
        raise ValueError(f"vocab must be one of {VOCAB_POLICIES}, got {vocab!r}")
    v = vector if isinstance(vector, SkillVector) else SkillVector.load(vector)
    target = open_model(model, base)
    if not Path(target.path).is_dir():
        raise CheckpointError(f"{model}: inject needs a model dir (config + weights), not a single file")
    arch = v.meta.get("architecture")
    if arch and target.architecture and arch != target.architecture:
        raise CheckpointError(f"vector was extracted from {arch} but {model} is {target.architecture}")
    for name in v.keys():
        if name not in target.tensors:
            raise CheckpointError(f"{model}: has no tensor {name!r}, which the skill vector changes")
        _row_overlap(name, tuple(target.shape(name)), tuple(v.shape(name)), vocab, f"the model {model}",
                     "the skill vector")
        if not target.tensors[name].dtype.is_floating_point:
            raise CheckpointError(f"{source_file(target, name)}: tensor {name!r} is {target.tensors[name].dtype} "
                                  "(quantized?); a float delta added to integer codes would be truncated. Inject into "
                                  "a floating-point model")
    _check_covers(v, target, model)
    out = Path(out)
    vkeys = set(v.keys())
    changed = [False]
    bar = tqdm(total=len(target.tensors), desc=f"inject λ={lam:g}", unit="tensor", leave=False,
               disable=not interactive())

    def produce(name):
        bar.update()
        w = target.get(name)
        if name not in vkeys:
            return check_finite(name, w, [target])
        delta = v.get(name)
        changed[0] = changed[0] or bool(delta.any())
        return check_finite(name, add_scaled_(w, delta, lam), [target] + inputs_of(v.source),
                            f"θ + λ·v with λ = {lam:g}")

    src_dir = Path(target.base.path if isinstance(target, DenseWithAdapter) else target.path)
    metadata = [f for f in src_dir.iterdir() if is_model_metadata(f.name) and _own_file(f, src_dir)]
    with atomic_output(out, force, inputs=_paths(target) + _paths(v.source)) as tmp:
        tmp.mkdir()
        for f in metadata:  # config, tokenizer, chat template, licence; never another copy of weights
            shutil.copy2(f, tmp / f.name)
        for shard, names, meta in target.shards:
            specs = [(n, target.tensors[n].dtype, target.shape(n)) for n in names]
            write_safetensors(tmp / shard, specs, produce, meta)
        index = src_dir / INDEX_FILE
        if index.exists():
            shutil.copy2(index, tmp / INDEX_FILE)
        provenance = {"operation": "inject", "model": str(model), "base": str(base) if base else None,
                      "lam": lam, "vector": v.meta, "pastkit_version": __version__}
        (tmp / "pastkit_provenance.json").write_text(json.dumps(provenance, indent=2))
    bar.close()
    if not changed[0]:
        warnings.warn(f"{out}: the skill vector ({v.meta.get('formula')}) is exactly zero, so the model was copied "
                      "unchanged", DegenerateWarning, stacklevel=2)
    return out


def _check_covers(v: SkillVector, target, model) -> None:
    """Refuse a vector that changes some of a model's blocks but not others of the same kind: a vector of a 2-layer
    model injected into a 3-layer one of the same width would leave layer 2 untouched without a word. Compared by
    name with the block number masked (a LoRA vector holds only the adapted modules, but in every block)."""
    kinds = {LAYER_INDEX.sub(".#.", n) for n in v.keys()}
    missed = sorted(n for n in target.keys() if n not in set(v.keys()) and LAYER_INDEX.sub(".#.", n) in kinds)
    if missed:
        shown = ", ".join(missed[:3]) + (", …" if len(missed) > 3 else "")
        raise CheckpointError(f"{model}: the skill vector changes tensors of this kind in other blocks but not "
                              f"{len(missed)} of the model's ({shown}); was it extracted from a model with fewer "
                              f"layers? (vector: {v.meta.get('formula')})")


def _own_file(f: Path, model_dir: Path) -> bool:
    """Is `f` the model's own file to copy: a regular file, or a symlink into the model dir (or, in a Hugging Face
    cache snapshot, into that repository's blobs). A link to anything else is refused, never copied as content."""
    if not f.is_symlink():
        return f.is_file()
    real, home = f.resolve(), model_dir.resolve()
    if model_dir.parent.name == "snapshots":  # huggingface_hub's layout: snapshots/<rev>/x -> ../../blobs/<sha>
        home = model_dir.parent.parent.resolve()
    if home not in real.parents:
        raise CheckpointError(f"{f} is a symlink to {real}, outside the model dir; pastkit copies only the model's "
                              "own files. Replace the link by the file it means")
    return real.is_file()
