"""The machine a result or a stage was computed on."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path

CPU_ID_FIELDS = ("vendor_id", "cpu family", "model", "stepping")  # /proc/cpuinfo keys, in `cpu_id`'s order


@functools.cache
def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU and library versions a result was computed on.

    The same code, data and seed give different numbers on different hardware: bf16 kernels round differently
    with and without AMX (LooGLE's Table 2 moved by four points between two such CPUs), so a result says where it
    was made. `bf16` lists the CPU's bf16 instructions, `cpu_id` its vendor, family, model and stepping, because a
    virtual machine's model name can be as vague as "AMD EPYC" for several generations (Linux only; empty where
    unknown).
    """
    cpu, flags, ident = platform.processor() or platform.machine(), set(), {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                cpu = value.strip()
            elif key in CPU_ID_FIELDS:
                ident[key] = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    cpu_id = " ".join(ident[k] if k == "vendor_id" else f"{k} {ident[k]}" for k in CPU_ID_FIELDS if k in ident)
    versions = {}
    for package in ("torch", "transformers", "trl", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cpu_id": cpu_id, "cores": os.cpu_count(), "bf16": sorted(flags & {"amx_bf16", "avx512_bf16"}),
            "python": platform.python_version(), **versions}
