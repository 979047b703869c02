"""Safetensors checkpoints read and written one tensor at a time.

Every parameter-space operation in pastkit (skill-vector extraction, injection, cosine analysis) streams
through this module, so peak memory is a few tensors, not a model: a 7B bf16 checkpoint (15 GB) is handled
on a 24 GB machine. Files are parsed by hand (the format is an 8-byte header length, a JSON header and raw
little-endian bytes) and read with plain `readinto`, not mmap, so resident memory stays bounded by the
largest tensor and a truncated file is reported before any output is written. Pickle files are never
opened.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit: a larger "header" means this is not safetensors
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
SKILL_VECTOR_KEY = "pastkit"  # safetensors metadata key of a saved skill vector
EMBEDDING_NAME = re.compile(r"(embed|lm_head|wte|word_embeddings)")


class CheckpointError(ValueError):
    """Bad input to a parameter-space operation; the message names the file and tensor at fault."""


def read_json(path: Path, want: type = dict):
    """A small JSON file (config, index, adapter config), or a CheckpointError naming it."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, want):
        raise CheckpointError(f"{path}: expected a JSON {want.__name__}, got a {type(value).__name__}")
    return value


def architecture_of(config: dict, where) -> str | None:
    """The first of a config's `architectures` (None if it names none), or a CheckpointError naming the file."""
    names = config.get("architectures")
    if names is None or names == []:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: 'architectures' must be a list of class names, got {names!r}")
    return names[0]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape, absolute byte range."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


UNSUPPORTED_DTYPES = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "U16", "U32", "U64", "C64")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header as strictly as the safetensors library does.

    Checked: header length, a JSON object, a `__metadata__` of strings, known dtypes, non-negative integer
    shapes and offsets, byte ranges that match their shapes and tile the data section exactly (no overlap,
    no gap, no trailing bytes), and a file long enough to hold them (catches truncation).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        n = int.from_bytes(raw_len, "little") if len(raw_len) == 8 else -1
        if n <= 0 or n > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: not a safetensors file (bad header length; {size} bytes on disk)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed safetensors header (a JSON {type(header).__name__}, not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: malformed safetensors header (__metadata__ must map strings to strings)")
    tensors = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}")
        if entry["dtype"] in UNSUPPORTED_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which pastkit does not "
                                  f"support (supported: {', '.join(DTYPES)})")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if entry["dtype"] not in DTYPES or not isinstance(shape, list) or not all(
                _is_int(d) and d >= 0 for d in shape) or not isinstance(offsets, list) or len(offsets) != 2 \
                or not all(_is_int(o) and o >= 0 for o in offsets) or offsets[1] < offsets[0]:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}")
        dtype = DTYPES[entry["dtype"]]
        start, end = 8 + n + offsets[0], 8 + n + offsets[1]
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        if end - start != nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} spans {end - start} bytes but {shape} needs {nbytes}")
        tensors[name] = TensorInfo(path, dtype, tuple(shape), start, end)
    cursor = 8 + n
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != cursor:
            what = "overlaps the previous tensor" if info.start < cursor else "leaves a gap before it"
            raise CheckpointError(f"{path}: malformed safetensors header: tensor {name!r} {what}")
        if info.end > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {info.end} but the file has {size} bytes")
        cursor = info.end
    if cursor < size:
        raise CheckpointError(f"{path}: {size - cursor} trailing bytes after the last tensor; not a valid safetensors "
                              "file")
    return tensors, metadata


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one tensor into fresh memory (no mmap, so nothing lingers in the resident set)."""
    buf = torch.empty(info.end - info.start, dtype=torch.uint8)
    with open(info.file, "rb") as f:
        f.seek(info.start)
        if f.readinto(buf.numpy()) != buf.numel():
            raise CheckpointError(f"{info.file}: short read at byte {info.start} (file changed while reading?)")
    return buf.view(info.dtype).reshape(info.shape)


def write_safetensors(path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], produce,
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whose tensors come one at a time from `produce(name)`.

    The header is computed up front from `specs` (name, dtype, shape), so only one tensor is ever held.
    """
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, dtype, shape in specs:
            t = produce(name)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise AssertionError(f"{name}: produced {t.dtype}{tuple(t.shape)}, declared {dtype}{tuple(shape)}")
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)


class TensorSource(Protocol):
    """Anything that yields named tensors lazily: a checkpoint, a LoRA adapter's deltas, a skill vector."""

    def keys(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> torch.Tensor: ...


def check_finite(name: str, t: torch.Tensor, inputs: list, result: str = "the result") -> torch.Tensor:
    """Refuse NaN/Inf in an output tensor, naming the file it came from (or `result`, say "θ + λ·v with λ = 5e30",
    when every input is finite and the arithmetic overflowed).

    Only outputs are checked on the fast path (a NaN or Inf in any input propagates to the output);
    the inputs are re-read only to say which one is at fault.
    """
    # A sum is finite only if every element is (NaN/Inf propagate): one fast reduction, no bool tensor.
    # A finite tensor whose sum overflows falls through to the exact element check.
    if t.is_floating_point() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        for src in inputs:
            if name in src.keys():
                bad = int((~torch.isfinite(src.get(name).float())).sum())
                if bad:
                    raise CheckpointError(f"{source_file(src, name)}: tensor {name!r} has {bad} non-finite value(s) "
                                          "(NaN/Inf)")
        raise CheckpointError(f"tensor {name!r}: {result} is not finite (overflow in float32)")
    return t


def source_file(src, name: str):
    """The file a tensor source reads `name` from, for messages: a checkpoint's shard, an adapter's weights file."""
    tensors = getattr(src, "tensors", None)
    if isinstance(tensors, dict) and name in tensors:
        return tensors[name].file
    return getattr(src, "weights", None) or getattr(src, "path", None) or repr(src)


class Checkpoint:
    """A dense safetensors model: a file, a dir with model.safetensors, or a sharded dir with its index."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file or directory")
        self.index: dict | None = None
        if self.path.is_file():
            if self.path.suffix in PICKLE_SUFFIXES:
                raise CheckpointError(f"{self.path}: pickle file; pastkit only reads safetensors")
            files = [self.path]
        elif (self.path / INDEX_FILE).exists():
            files = self._index_files()
        elif (self.path / WEIGHT_FILE).exists():
            files = [self.path / WEIGHT_FILE]
        else:
            pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise CheckpointError(
                    f"{self.path}: only pickle weights ({', '.join(pickles)}); pastkit never unpickles. "
                    "Convert them once with a tool you trust (e.g. transformers save_pretrained) to safetensors.")
            raise CheckpointError(f"{self.path}: no {WEIGHT_FILE} or {INDEX_FILE} found")
        self.shards: list[tuple[str, list[str], dict[str, str]]] = []  # (file name, tensor names, metadata)
        self.tensors: dict[str, TensorInfo] = {}
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{self.path}: index names shard {f.name}, which is missing")
            infos, meta = read_header(f)
            names = sorted(infos, key=lambda k: infos[k].start)
            for name in names:
                if name in self.tensors:
                    raise CheckpointError(f"{self.path}: tensor {name!r} is in two shards, "
                                          f"{self.tensors[name].file.name} and {f.name}; which one is the model's "
                                          "is undefined, so the checkpoint is refused")
            self.shards.append((f.name, names, meta))
            self.tensors.update(infos)
        if self.index is not None:
            for name, shard in self.index["weight_map"].items():
                if self.tensors.get(name) is None or self.tensors[name].file.name != shard:
                    raise CheckpointError(f"{self.path}: index puts {name!r} in {shard}, but that shard lacks it")
        self.config = {}
        if self.path.is_dir():  # a model dir: its config says which architecture it is, so it must exist
            if not (self.path / "config.json").exists():
                raise CheckpointError(f"{self.path}: no config.json; a model dir needs one (it names the "
                                      "architecture, which pastkit checks before combining models)")
            self.config = read_json(self.path / "config.json", dict)
            architecture_of(self.config, self.path / "config.json")

    def _index_files(self) -> list[Path]:
        """Shard files named by a sharded model's index, each checked to lie inside the model dir."""
        index_path = self.path / INDEX_FILE
        self.index = read_json(index_path, dict)
        weight_map = self.index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index_path}: needs a non-empty 'weight_map' of tensor name -> shard file")
        files = []
        for shard in dict.fromkeys(weight_map.values()):
            if Path(shard).name != shard or shard in (".", ".."):
                raise CheckpointError(f"{index_path}: shard {shard!r} is not a file name inside {self.path}")
            files.append(self.path / shard)
        return files

    @property
    def is_skill_vector(self) -> bool:
        """A single file saved by `SkillVector.save` (its metadata says so): a delta, not a model."""
        return len(self.shards) == 1 and SKILL_VECTOR_KEY in self.shards[0][2]

    def __repr__(self):
        return f"Checkpoint({str(self.path)!r}, {len(self.tensors)} tensors)"

    @property
    def architecture(self) -> str | None:
        return architecture_of(self.config, self.path / "config.json")

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return self.tensors[name].dtype

    def get(self, name: str) -> torch.Tensor:
        return read_tensor(self.tensors[name])

    def numel(self) -> int:
        return sum(math.prod(i.shape) for i in self.tensors.values())


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern/alpha_pattern lookup: a key matches a module name suffix."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _check_patterns(config: dict, cfg_path: Path) -> None:
    """rank_pattern and alpha_pattern: maps of regular expression to a positive number, as peft reads them."""
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(field) or {}
        if not isinstance(patterns, dict):
            raise CheckpointError(f"{cfg_path}: {field!r} must map module-name patterns to numbers")
        for key, value in patterns.items():
            try:
                re.compile(rf"(.*\.)?{key}$")
            except re.error as e:
                raise CheckpointError(f"{cfg_path}: {field} key {key!r} is not a valid regular expression ({e})") \
                    from None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{cfg_path}: {field}[{key!r}] must be a positive number, got {value!r}")


class LoraAdapter:
    """A peft LoRA adapter dir seen as dense deltas: ΔW = B·A·scaling, exactly what merge_and_unload adds.

    scaling = alpha / r, or alpha / sqrt(r) with use_rslora; rank_pattern/alpha_pattern and fan_in_fan_out
    are honoured. Keys are the base model's parameter names (e.g. `model.layers.0.self_attn.q_proj.weight`).
    """

    PREFIX = "base_model.model."

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        cfg_path = self.path / "adapter_config.json"
        if not cfg_path.exists():
            raise CheckpointError(f"{self.path}: not a peft adapter dir (no adapter_config.json)")
        self.config = read_json(cfg_path, dict)
        if self.config.get("peft_type") != "LORA":
            raise CheckpointError(f"{self.path}: peft_type {self.config.get('peft_type')!r}; only LORA is supported")
        if self.config.get("use_dora"):
            raise CheckpointError(f"{self.path}: DoRA adapters have no fixed ΔW = B·A; not supported")
        for key in ("r", "lora_alpha"):
            if not isinstance(self.config.get(key), (int, float)) or isinstance(self.config.get(key), bool) \
                    or self.config[key] <= 0:
                raise CheckpointError(f"{cfg_path}: needs a positive number {key!r} (got {self.config.get(key)!r})")
        _check_patterns(self.config, cfg_path)
        weights = self.path / "adapter_model.safetensors"
        if not weights.exists():
            raise CheckpointError(f"{self.path}: no adapter_model.safetensors (pickle adapters are never loaded)")
        raw = Checkpoint(weights)
        self._ab: dict[str, tuple[str, str, bool]] = {}  # param name -> (A key, B key, is_embedding)
        for key in raw.keys():
            m = re.fullmatch(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.[^.]+)?\.weight", key) \
                or re.fullmatch(r"(.+)\.(lora_embedding_A|lora_embedding_B)(\.[^.]+)?", key)
            if not m:
                raise CheckpointError(
                    f"{weights}: tensor {key!r} is not a LoRA factor (modules_to_save/bias adapters are not supported)")
            module = m.group(1).removeprefix(self.PREFIX)
            is_emb = "embedding" in m.group(2)
            a_key = key.replace(m.group(2), "lora_embedding_A" if is_emb else "lora_A")
            b_key = key.replace(m.group(2), "lora_embedding_B" if is_emb else "lora_B")
            if a_key not in raw.tensors or b_key not in raw.tensors:
                raise CheckpointError(f"{weights}: {module} has only one of its two LoRA factors")
            a, b = raw.shape(a_key), raw.shape(b_key)
            if len(a) != 2 or len(b) != 2 or b[1] != a[0]:
                raise CheckpointError(f"{weights}: the LoRA factors of {module} do not fit together: {a_key} is "
                                      f"{list(a)} and {b_key} is {list(b)} (B·A needs as many columns in B as rows "
                                      "in A: the rank)")
            self._ab[f"{module}.weight"] = (a_key, b_key, is_emb)
        self._raw, self.weights = raw, weights

    def __repr__(self):
        return f"LoraAdapter({str(self.path)!r}, {len(self._ab)} modules)"

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def scaling(self, name: str) -> float:
        module = name.removesuffix(".weight")
        r = _pattern_value(self.config.get("rank_pattern"), module, self.config["r"])
        alpha = _pattern_value(self.config.get("alpha_pattern"), module, self.config["lora_alpha"])
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def keys(self) -> list[str]:
        return list(self._ab)

    def shape(self, name: str) -> tuple[int, ...]:
        a_key, b_key, is_emb = self._ab[name]
        a, b = self._raw.shape(a_key), self._raw.shape(b_key)
        shape = (a[1], b[0]) if is_emb else (b[0], a[1])
        return shape[::-1] if self.config.get("fan_in_fan_out") and not is_emb else shape

    def get(self, name: str) -> torch.Tensor:
        a_key, b_key, is_emb = self._ab[name]
        a, b = self._raw.get(a_key).float(), self._raw.get(b_key).float()
        delta = (b @ a) * self.scaling(name)
        return delta.T if is_emb or self.config.get("fan_in_fan_out") else delta


def is_adapter(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").exists()
