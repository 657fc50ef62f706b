"""``mpt-ref inspect PATH``: what is in a PEFT adapter directory, a checkpoint file or an ONNX model,
without torch.

For a directory: the config (or, for an adapter of a kind mpt-ref cannot build, e.g. LoRA, its peft_type
and a line saying so); for every file its size and sha256; for each tensor file every tensor's key,
shape, dtype **as stored** (a bfloat16 tensor is shown as bfloat16, though mpt-ref reads it widened to
float32) and the sha256 of its little-endian bytes as read (equal across .bin and .safetensors copies of
a tensor). For an ``.onnx`` file: producer, opsets, metadata (mpt_ref.* first), inputs and outputs with
their types and shapes, and the initializers' count and bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from mpt_ref.errors import CheckpointError, ConfigError, shown

TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_NAME = "adapter_config.json"  # mpt_ref.modules.config.CONFIG_NAME
BUILDS = ("PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING")  # the peft_types mpt-ref builds
ONNX_NAMES = {"FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}
SAFETENSORS_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                     "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def tensor_digest(value: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()).hexdigest()


def read_with_stored_dtypes(path: Path, data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors as mpt-ref reads them, key -> dtype as stored in the file)."""
    from mpt_ref.io.checkpoint import parse_safetensors
    from mpt_ref.io.torch_pickle import parse_torch_checkpoint

    if path.suffix == ".safetensors":
        tensors = parse_safetensors(data, path=str(path))[0]  # validated: the header below is well-formed
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        return tensors, {k: SAFETENSORS_NAMES.get(v["dtype"], v["dtype"]) for k, v in header.items()
                         if k != "__metadata__"}
    stored: dict[str, str] = {}
    return parse_torch_checkpoint(data, path=str(path), stored_dtypes=stored), stored


def _config_lines(path: Path) -> list[str]:
    from mpt_ref.modules.config import load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        try:
            raw = json.loads((path / CONFIG_NAME).read_text())
        except (OSError, ValueError):
            raise exc from None
        kind = raw.get("peft_type") if isinstance(raw, dict) else None
        if kind in BUILDS or kind is None:
            raise  # a prompt adapter with a bad config: the error says what is wrong
        return [f"config: peft_type {shown(kind, 40)!r}: mpt-ref builds {', '.join(BUILDS)} adapters only, so it "
                "cannot build this one; its files and tensors:"]
    return [f"config ({type(config).__name__}):", json.dumps(config.to_dict(), indent=2, sort_keys=True)]


def describe_onnx(path: Path) -> str:
    """An ONNX model's header, metadata, signature and initializers."""
    from onnx import TensorProto

    from onnx_export.runtimes import load_model

    model = load_model(path, "PATH")
    g = model.graph
    init = {t.name for t in g.initializer}

    def signature(v: Any) -> str:
        t = v.type.tensor_type
        dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim]
        name = TensorProto.DataType.Name(t.elem_type)
        return f"  {v.name:<24} {ONNX_NAMES.get(name, name.lower()):<8} [{', '.join(dims)}]" + (
            f"  {shown(v.doc_string, 100)}" if v.doc_string else "")

    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    meta = sorted(model.metadata_props, key=lambda p: (not p.key.startswith("mpt_ref."), p.key))
    nbytes = sum(len(t.raw_data) for t in g.initializer)
    data = path.read_bytes()  # load_model read it already: a regular file within the limits
    lines = [f"onnx model {path.name}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}",
             f"graph {g.name!r}, producer {model.producer_name} {model.producer_version}, "
             f"ir_version {model.ir_version}, opsets {opsets}, {len(g.node)} nodes",
             f"metadata ({len(meta)}):", *(f"  {p.key} = {shown(p.value, 4000)}" for p in meta),
             "inputs:", *(signature(v) for v in g.input if v.name not in init),
             "outputs:", *(signature(v) for v in g.output),
             f"initializers: {len(g.initializer)} ({nbytes} bytes of raw data)"]
    return "\n".join(lines)


def describe(path: str | Path) -> str:
    from mpt_ref.io.adapter_files import ADAPTER_NAMES
    from mpt_ref.io.limits import MAX_BYTES, read_regular_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"PATH: expected an adapter directory, a checkpoint or an .onnx file, got missing {path}")
    if path.is_file() and path.suffix == ".onnx":
        return describe_onnx(path)
    lines = []
    # adapter and tensor files that are not regular (a FIFO, a dangling link) are read, so refused by name
    files = sorted(p for p in path.iterdir() if p.is_file() or p.name in ADAPTER_NAMES or p.suffix in TENSOR_SUFFIXES
                   ) if path.is_dir() else [path]
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        lines += _config_lines(path)
    lines.append("files:")
    contents = {}
    for f in files:
        data = contents[f] = read_regular_file(f, MAX_BYTES, CheckpointError, "file")  # no FIFO, device, oversized
        lines.append(f"  {f.name:<32} {len(data):>10} bytes  sha256 {hashlib.sha256(data).hexdigest()}")
    for f in (f for f in files if f.suffix in TENSOR_SUFFIXES):
        tensors, stored = read_with_stored_dtypes(f, contents[f])
        lines.append(f"tensors in {f.name} ({len(tensors)}; dtype as stored):")
        for key in sorted(tensors):
            v = tensors[key]
            lines.append(f"  {key:<32} {str(tuple(v.shape)):<16} {stored.get(key, str(v.dtype)):<8} "
                         f"sha256 {tensor_digest(v)[:16]}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    print(describe(args.path))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what a PEFT adapter, a checkpoint or an .onnx file holds: config, files, "
                                          "tensors (key, shape, stored dtype), checksums, ONNX metadata and signature")
    p.add_argument("path", help="a PEFT adapter directory (any peft_type), a .safetensors / .bin checkpoint, or an "
                                ".onnx model")
    p.set_defaults(func=_main)
