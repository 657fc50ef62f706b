"""``mpt-ref inspect PATH``: what is in a PEFT adapter directory or a checkpoint file, without torch.

Prints the config (for a directory), every file's size and sha256, and each tensor's key, shape, dtype
and the sha256 of its little-endian bytes (equal across .bin and .safetensors copies of a tensor).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from mpt_ref.errors import CheckpointError
from mpt_ref.io.adapter_files import ADAPTER_NAMES
from mpt_ref.io.checkpoint import read_tensors
from mpt_ref.io.limits import MAX_BYTES, read_regular_file
from mpt_ref.modules.config import CONFIG_NAME, load_config

TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def tensor_digest(value: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()).hexdigest()


def describe(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"PATH: expected an adapter directory or a checkpoint file, got missing {path}")
    lines = []
    # adapter and tensor files that are not regular (a FIFO, a dangling link) are read, so refused by name
    files = sorted(p for p in path.iterdir() if p.is_file() or p.name in ADAPTER_NAMES or p.suffix in TENSOR_SUFFIXES
                   ) if path.is_dir() else [path]
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        config = load_config(path)
        lines += [f"config ({type(config).__name__}):", json.dumps(config.to_dict(), indent=2, sort_keys=True)]
    lines.append("files:")
    for f in files:
        data = read_regular_file(f, MAX_BYTES, CheckpointError, "file")  # no FIFO, device or oversized file
        lines.append(f"  {f.name:<32} {len(data):>10} bytes  sha256 {hashlib.sha256(data).hexdigest()}")
    for f in (f for f in files if f.suffix in TENSOR_SUFFIXES):
        tensors = read_tensors(f)
        lines.append(f"tensors in {f.name} ({len(tensors)}):")
        for key in sorted(tensors):
            v = tensors[key]
            lines.append(f"  {key:<32} {str(tuple(v.shape)):<16} {str(v.dtype):<8} sha256 {tensor_digest(v)[:16]}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    print(describe(args.path))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="config, tensors (name, shape, dtype) and checksums of an adapter or checkpoint")
    p.add_argument("path", help="a PEFT adapter directory, or a .safetensors / .bin checkpoint")
    p.set_defaults(func=_main)
