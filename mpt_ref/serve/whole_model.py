"""Whole-model ONNX: the prompt-prepend graph (onnx_export/prepend.py) in front of a base-model graph.

The base graph is what ``torch.onnx.export`` of a transformers model called with ``inputs_embeds`` and
``attention_mask`` gives: it holds no word-embedding lookup, so the word embeddings W (V, D) are read
from the base model's safetensors file (the usual key names are found automatically). The composed
model takes ``input_ids``, ``attention_mask`` (and ``task_ids`` for MPT) and returns the base graph's
outputs (``logits`` over the N + S positions, as PEFT's forward returns them). Spec: spec/serving.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, version_converter

from mpt_ref.errors import CheckpointError, InputError, OutputExistsError, shown
from mpt_ref.interop.adapter import load_peft_adapter
from mpt_ref.io.atomic import atomic_write_bytes
from mpt_ref.io.checkpoint import read_safetensors
from mpt_ref.serve.model_check import ModelReport, check_whole_model
from mpt_ref.serve.servable import check_servable
from mpt_ref.serve.triton import write_triton_repository
from onnx_export._spec import module_spec
from onnx_export.exporter import strip_value_info
from onnx_export.prepend import (
    ATTENTION_MASK,
    EXTENDED_MASK,
    INPUTS_EMBEDS,
    MASK_DTYPES,
    build_prepend_model,
    dedupe_opsets,
)
from onnx_export.runtimes import load_model

# Word-embedding keys of common transformers checkpoints, tried in this order.
EMBEDDING_KEYS = (
    "model.embed_tokens.weight",                   # Llama, Mistral, Qwen2, Gemma, Phi-3
    "transformer.wte.weight",                      # GPT-2, GPT-J, CodeGen, StarCoder
    "wte.weight",                                  # GPT2Model saved without the LM head
    "embed_tokens.weight",                         # a *Model (no LM head) of the Llama family
    "model.decoder.embed_tokens.weight",           # OPT
    "transformer.word_embeddings.weight",          # BLOOM, Falcon
    "gpt_neox.embed_in.weight",                    # GPT-NeoX, Pythia
    "model.language_model.embed_tokens.weight",    # multimodal wrappers (Llava-style)
    "shared.weight",                               # T5
    "model.shared.weight",                         # BART, mBART
    "word_embeddings.weight",
)
BASE_PREFIX = "base/"
FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
TWO_GIB = 2 << 30  # protobuf's limit on one serialized ModelProto


def read_word_embeddings(path: str | os.PathLike, key: str | None = None) -> tuple[str, np.ndarray]:
    """(key, W (V, D)) from a base model's safetensors file: ``key`` if given, else the one of
    EMBEDDING_KEYS present (bfloat16 is widened to float32 exactly)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"base weights: expected a .safetensors file, got {str(path)!r}")
    tensors, _ = read_safetensors(path)
    if key is not None:
        if key not in tensors:
            raise CheckpointError(f"{path}: expected embedding key {key!r}, got keys {_some(tensors)}")
        found = key
    else:
        present = [k for k in EMBEDDING_KEYS if k in tensors]
        distinct = {k for k in present if not any(np.array_equal(tensors[k], tensors[j]) for j in present[:present.index(k)])}
        if not present:
            raise CheckpointError(f"{path}: expected one of the word-embedding keys {list(EMBEDDING_KEYS)}, got none "
                                  f"of them (keys: {_some(tensors)}); pass --embedding-key")
        if len(distinct) > 1:
            raise CheckpointError(f"{path}: expected one word-embedding key, got several different tensors "
                                  f"{sorted(distinct)}; pass --embedding-key")
        found = present[0]
    w = tensors[found]
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise CheckpointError(f"{path}: expected {found!r} to be a float (V, D) matrix, got shape {w.shape} dtype {w.dtype}")
    return found, w


def _some(tensors: dict[str, Any]) -> list[str]:
    keys = sorted(tensors)
    return keys[:20] + (["..."] if len(keys) > 20 else [])


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def base_signature(base: onnx.ModelProto, D: int) -> tuple[str, int]:
    """Checks the base graph's interface; returns (float dtype of inputs_embeds, mask element type)."""
    initializers = {i.name for i in base.graph.initializer}
    inputs = {i.name: i for i in base.graph.input if i.name not in initializers}
    if set(inputs) != {INPUTS_EMBEDS, ATTENTION_MASK}:
        raise InputError(f"base graph: expected inputs ['{ATTENTION_MASK}', '{INPUTS_EMBEDS}'] (torch.onnx.export of the "
                         f"model called with inputs_embeds and attention_mask), got {sorted(inputs)}")
    embeds, mask = inputs[INPUTS_EMBEDS], inputs[ATTENTION_MASK]
    e_type, m_type = embeds.type.tensor_type.elem_type, mask.type.tensor_type.elem_type
    if e_type not in FLOAT_TYPES:
        raise InputError(f"base graph: expected {INPUTS_EMBEDS} of type float or float16, got "
                         f"{TensorProto.DataType.Name(e_type)}")
    e_dims, m_dims = _dims(embeds), _dims(mask)
    if len(e_dims) != 3 or (isinstance(e_dims[2], int) and e_dims[2] not in (0, D)):
        raise InputError(f"base graph: expected {INPUTS_EMBEDS} of shape (batch, sequence, {D}) (the adapter's token_dim), "
                         f"got {e_dims}")
    if m_type not in MASK_DTYPES or len(m_dims) != 2:
        raise InputError(f"base graph: expected {ATTENTION_MASK} of shape (batch, sequence) and type int64, int32, float, "
                         f"float16 or bool, got {m_dims} {TensorProto.DataType.Name(m_type)}")
    for what, dims in ((INPUTS_EMBEDS, e_dims), (ATTENTION_MASK, m_dims)):
        if isinstance(dims[1], int) and dims[1] > 0:
            raise InputError(f"base graph: expected {what} with a symbolic (dynamic) sequence axis, to take the "
                             f"N prompt rows in front of the ids, got fixed shape {dims} (export the base model with "
                             "dynamic_axes / dynamic_shapes for batch and sequence)")
    for d_in, d_other in ((e_dims[0], m_dims[0]), (e_dims[1], m_dims[1])):
        if isinstance(d_in, int) and d_in and isinstance(d_other, int) and d_other and d_in != d_other:
            raise InputError(f"base graph: expected {INPUTS_EMBEDS} and {ATTENTION_MASK} to share batch and sequence "
                             f"dims, got {e_dims} and {m_dims}")
    if not base.graph.output:
        raise InputError("base graph: expected at least one output (logits), got none")
    return FLOAT_TYPES[e_type], m_type


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def compose_model(module: Any, base: onnx.ModelProto, word_embeddings: Any, *, variant: str = "folded") -> onnx.ModelProto:
    """The prepend graph of ``module`` and W, connected to ``base``'s inputs_embeds and attention_mask."""
    if not isinstance(base, onnx.ModelProto):
        raise InputError(f"base: expected an onnx.ModelProto, got {type(base).__name__}")
    dtype, mask_type = base_signature(base, module_spec(module).D)
    prepend = build_prepend_model(module, word_embeddings, variant=variant, dtype=dtype, mask_dtype=mask_type)
    opset = _default_opset(base)
    if opset != _default_opset(prepend):
        try:
            prepend = version_converter.convert_version(prepend, opset)
        except Exception as exc:  # noqa: BLE001 - the converter raises several types
            raise InputError(f"base graph: expected an opset the prepend graph converts to (>= 13), got opset {opset} "
                             f"({type(exc).__name__}: {shown(exc)})") from None
    ir = max(prepend.ir_version, base.ir_version)
    prepend.ir_version = ir
    base_copy = onnx.ModelProto()
    base_copy.CopyFrom(base)
    base_copy.ir_version = ir
    base_copy = compose.add_prefix(base_copy, BASE_PREFIX, rename_outputs=False)
    clash = {o.name for o in base_copy.graph.output} & {i.name for i in prepend.graph.input}
    if clash:
        raise InputError(f"base graph: expected output names other than the model inputs, got {sorted(clash)}")
    model = compose.merge_models(
        prepend, base_copy,
        io_map=[(INPUTS_EMBEDS, BASE_PREFIX + INPUTS_EMBEDS), (EXTENDED_MASK, BASE_PREFIX + ATTENTION_MASK)],
        producer_name="mpt-ref export-model",
        doc_string=f"{prepend.doc_string} Then the base graph {base.graph.name!r}.",
    )
    dedupe_opsets(model)
    # the value_info merge_models keeps (the joined edges' declared shapes, whose symbols differ between the
    # two graphs) is dropped: tract refuses to unify such symbols; runtimes infer the shapes again
    strip_value_info(model.graph)
    model.graph.name = f"{prepend.graph.name}_{base.graph.name or 'base'}"
    if model.ByteSize() > TWO_GIB:
        raise InputError(f"composed model: expected at most 2 GiB (one protobuf), got {model.ByteSize()} bytes; "
                         "external-data models are not supported")
    onnx.checker.check_model(model)
    return model


def load_onnx(path: str | os.PathLike, what: str = "base ONNX") -> onnx.ModelProto:
    return load_model(path, what)


def fixed_batch(base: onnx.ModelProto) -> int | None:
    """The base graph's batch size when its export fixed it, None when the batch axis is symbolic."""
    embeds = next(i for i in base.graph.input if i.name == INPUTS_EMBEDS)
    first = _dims(embeds)[0]
    return first if isinstance(first, int) and first > 0 else None


def export_model(
    adapter: str | os.PathLike,
    base_onnx: str | os.PathLike,
    base_weights: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    embedding_key: str | None = None,
    variant: str = "folded",
    overwrite: bool = False,
    triton: str | os.PathLike | None = None,
    name: str = "prompt_model",
    max_batch_size: int = 8,
    triton_backend: str = "onnxruntime",
) -> tuple[onnx.ModelProto, ModelReport]:
    """``mpt-ref export-model``: a PEFT adapter directory + base ONNX + base safetensors -> one model, checked
    on onnxruntime (mpt_ref/serve/model_check.py) and written to ``output`` (atomically) only when the check
    passes; with ``triton``, also the Triton repository DIR/name, staged, checked again from the staged
    file and swapped into place whole. Returns (model, report). Refused before any work or write: an
    existing output without ``overwrite``, an adapter PEFT does not serve as a prompt in front of this base
    (mpt_ref/serve/servable.py), a base graph that cannot take the prompt (fixed sequence axis)."""
    if output is not None and Path(output).exists() and not overwrite:  # refuse before any work
        raise OutputExistsError(f"{output}: expected a new file, got an existing one (pass overwrite=True / --force)")
    if triton is not None:
        root = Path(triton) / name
        if root.is_dir() and any(root.iterdir()) and not overwrite:
            raise OutputExistsError(f"{root}: expected a new Triton model directory, got an existing one "
                                    "(pass overwrite=True / --force)")
    module = load_peft_adapter(adapter)
    check_servable(module, adapter)
    _, w = read_word_embeddings(base_weights, embedding_key)
    base = load_onnx(base_onnx)
    model = compose_model(module, base, w, variant=variant)
    dtype, mask_elem = base_signature(base, module_spec(module).D)

    def check(candidate: onnx.ModelProto) -> ModelReport:
        return check_whole_model(candidate, base, module, w, variant=variant, dtype=dtype, mask_elem=mask_elem,
                                 n_prompt=int(module.config.num_virtual_tokens), batch=fixed_batch(base))

    report = check(onnx.load_from_string(model.SerializeToString()))
    if not report.ok:
        return model, report
    existed = output is not None and Path(output).exists()

    def write_output() -> None:
        if output is not None:
            atomic_write_bytes(output, model.SerializeToString(), overwrite=overwrite)

    if triton is None:
        write_output()
        return model, report
    try:  # the Triton set is staged and checked first; -o is written just before it is swapped in
        report, _, _ = write_triton_repository(model, triton, name, max_batch_size=max_batch_size,
                                               overwrite=overwrite, check=check, with_set=write_output,
                                               backend=triton_backend)
    except BaseException:
        if output is not None and not existed:
            Path(output).unlink(missing_ok=True)  # a new -o file without its repository: not a set
        raise
    return model, report
