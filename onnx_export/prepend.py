"""The prompt-prepend graph: token ids in, what PEFT hands the base model out (spec/serving.md).

    inputs   input_ids       int64 (B, S)
             attention_mask  (B, S), int64 unless asked otherwise (the base graph's mask dtype)
             task_ids        int64 (B or 1), MPT only
    outputs  inputs_embeds            (B, N + S, D) = concat(prompt[:, :N], W[input_ids])
             extended_attention_mask  (B, N + S)    = concat(ones(B, N), attention_mask)

as ``PeftModelForCausalLM.forward`` builds them for a prompt-learning adapter (PEFT 0.21.2): the prompt
first, then the word embeddings of the ids; a mask of ones for the N virtual tokens in front of the
user's mask. N = num_virtual_tokens. For CAUSAL_LM (one transformer submodule) N = T and the whole
prompt is prepended. For SEQ_2_SEQ_LM (two submodules, T = 2N) this is the *encoder* side: PEFT feeds
the encoder ``prompt[:, :N]``; what it does on the decoder side is in spec/serving.md.

The graph is composed with ``onnx.compose`` from three parts, never written out twice:

    front   ids -> prompt indices arange(T) per row, task ids, W[input_ids], the extended mask
    prompt  the module's own exported graph (onnx_export.exporter.build_model), names untouched
    back    concat(prompt[:, :N], W[input_ids]) -> inputs_embeds

The id policy is the prompt graphs' (spec/onnx.md): an input id outside [0, V) gives a NaN row of
``inputs_embeds``, an invalid task id NaN prompt rows; an ``attention_mask`` whose shape is not that
of ``input_ids`` fails at run time (no silent broadcast).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper

from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.errors import InputError
from onnx_export._faithful import lookup
from onnx_export._graph import GraphBuilder, int64_input
from onnx_export._spec import ModuleSpec, module_spec
from onnx_export.exporter import (
    DTYPES,
    INPUT_INDICES,
    INPUT_TASK_IDS,
    META_PREFIX,
    OUTPUT,
    build_model,
    check,
    export_dtype,
)
from onnx_export.opset import IR_VERSION, OPSET

INPUT_IDS, ATTENTION_MASK, TASK_IDS = "input_ids", "attention_mask", "task_ids"
INPUTS_EMBEDS, EXTENDED_MASK = "inputs_embeds", "extended_attention_mask"
WORD_EMBEDDINGS = "word_embeddings.weight"  # PEFT's attribute name: PeftModel.word_embeddings
TOKEN_EMBEDS = "token_embeds"  # W[input_ids], an edge between front and back
FRONT_PREFIX = "prepend/"
# attention_mask dtypes a base graph may take (what torch.onnx.export of an int/float/bool mask gives)
MASK_DTYPES = (TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BOOL)
SEQUENCE, TOTAL_SEQUENCE = "sequence", "prompt_plus_sequence"


def _submodules(module: Any) -> tuple[int, int]:
    """(N, number of transformer submodules) of the module's config."""
    config = module.config
    n, subs = int(config.num_virtual_tokens), int(config.num_transformer_submodules)
    if subs not in (1, 2):
        raise InputError(f"module.config.num_transformer_submodules: expected 1 or 2, got {subs}")
    return n, subs


def _check_word_embeddings(word_embeddings: Any, D: int) -> np.ndarray:
    w = np.asarray(word_embeddings)
    if w.ndim != 2 or w.shape[1] != D or w.shape[0] < 1:
        raise InputError(f"word_embeddings: expected shape (V, D) with D={D} (the adapter's token_dim), got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise InputError(f"word_embeddings: expected a float array, got dtype {w.dtype}")
    if not np.isfinite(w).all():
        raise InputError("word_embeddings: expected finite values, got NaN or inf")
    return w


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _front(spec: ModuleSpec, w: np.ndarray, dtype: str, mask_elem: int, n_prompt: int) -> onnx.ModelProto:
    """ids -> prompt indices (B, T), task ids, W[input_ids] (B, S, D), extended mask (B, N + S)."""
    g = GraphBuilder(DTYPES[dtype])
    V, T, D = w.shape[0], spec.T, spec.D
    inputs = [int64_input(INPUT_IDS, ["batch", SEQUENCE]),
              helper.make_tensor_value_info(ATTENTION_MASK, mask_elem, ["batch", SEQUENCE])]
    # Every shape below follows from the inputs' shapes by broadcasting or Concat, never from a Shape value
    # fed to Expand or Reshape (tract's symbolic analysis cannot follow those).
    zero = g.int_const("zero", 0)
    zeros = g.node("ReduceSum", [g.node("Mul", [INPUT_IDS, zero], "input_ids_times_0"), g.int_const("seq_axis", [1])],
                   "zeros_B1", keepdims=1)  # B,1 (also for S = 0)
    # the user's mask, refused unless its shape is that of input_ids: this Concat on axis 0 needs the same
    # rank and S, the extended mask's Concat on axis 1 below the same B; the check's zero feeds the indices
    both = g.node("Concat", [g.node("Cast", [ATTENTION_MASK], "attention_mask_i64", to=TensorProto.INT64), INPUT_IDS],
                  "mask_and_ids", axis=0)  # (B + B, S) when the shapes agree
    checked_zero = g.node("ReduceSum", [g.node("Mul", [both, zero], "mask_and_ids_times_0")], "mask_checked_zero",
                          keepdims=1)  # 1,1
    # PEFT's prompt_tokens: arange(T) on every row
    indices = g.node("Add", [g.node("Add", [zeros, checked_zero], "zeros_B1_checked"),
                             g.int_const("arange_T", np.arange(T)[None])], "prompt_indices")  # B,T
    outputs = [(indices, TensorProto.INT64, ["batch", T])]
    if spec.kind.takes_task_ids:
        inputs.append(int64_input(TASK_IDS, ["task_batch"]))
        outputs.append((g.node("Identity", [TASK_IDS], "prompt_task_ids"), TensorProto.INT64, ["task_batch"]))
    # W[input_ids], an id outside [0, V) -> the NaN row
    table = g.weight(WORD_EMBEDDINGS, w)
    embeds = g.node("Identity", [lookup(g, table, V, (D,), INPUT_IDS, "input_ids")], TOKEN_EMBEDS)  # B,S,D
    outputs.append((embeds, g.elem_type, ["batch", SEQUENCE, D]))
    ones = g.node("Cast", [g.node("Add", [zeros, g.int_const("ones_N", np.ones((1, n_prompt)))], "prompt_mask_i64")],
                  "prompt_mask", to=mask_elem)  # B,N: 1 (True for a bool mask) in the mask's dtype
    mask = ATTENTION_MASK
    extended = g.node("Concat", [ones, mask], EXTENDED_MASK, axis=1)  # B,N+S
    outputs.append((extended, mask_elem, ["batch", TOTAL_SEQUENCE]))
    graph = helper.make_graph(g.nodes, "mpt_ref_prepend_front", inputs,
                              [helper.make_tensor_value_info(name, elem, shape) for name, elem, shape in outputs],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    # prefix every internal name (the prompt graph uses the same hints), keep the interface and W's name
    model = compose.add_prefix(model, FRONT_PREFIX, rename_inputs=False, rename_outputs=False)
    _rename(model.graph, FRONT_PREFIX + WORD_EMBEDDINGS, WORD_EMBEDDINGS)
    return model


def _back(spec: ModuleSpec, dtype: str, n_prompt: int) -> onnx.ModelProto:
    """concat(prompt[:, :N], token_embeds) -> inputs_embeds (B, N + S, D)."""
    g = GraphBuilder(DTYPES[dtype])
    D = spec.D
    inputs = [helper.make_tensor_value_info(OUTPUT, g.elem_type, ["batch", spec.T, D]),
              helper.make_tensor_value_info(TOKEN_EMBEDS, g.elem_type, ["batch", SEQUENCE, D])]
    prompt = OUTPUT
    if n_prompt != spec.T:  # SEQ_2_SEQ: the encoder takes the first N virtual tokens
        prompt = g.node("Slice", [OUTPUT, g.int_const("start", [0]), g.int_const("N", [n_prompt]),
                                  g.int_const("token_axis", [1])], "encoder_prompt")  # B,N,D
    g.nodes.append(helper.make_node("Concat", [prompt, TOKEN_EMBEDS], [INPUTS_EMBEDS], name="inputs_embeds/Concat", axis=1))
    graph = helper.make_graph(g.nodes, "mpt_ref_prepend_back", inputs,
                              [helper.make_tensor_value_info(INPUTS_EMBEDS, g.elem_type, ["batch", TOTAL_SEQUENCE, D])],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return compose.add_prefix(model, FRONT_PREFIX + "back/", rename_inputs=False, rename_outputs=False)


def build_prepend_model(
    module: Any,
    word_embeddings: Any,
    *,
    variant: str = "folded",
    dtype: Any = "float32",
    mask_dtype: int = TensorProto.INT64,
) -> onnx.ModelProto:
    """The checked prepend model of an mpt_ref module (PromptEmbedding, MultitaskPromptEmbedding or
    PromptEncoder, e.g. from ``load_peft_adapter``) and the base model's word embeddings W (V, D).

    variant: the prompt graph's ("folded" by default: one Gather of the precomputed prompt table).
    dtype: the float dtype of ``inputs_embeds`` (the base model's); W and the prompt are cast to it,
    as PEFT casts the prompt to the dtype of the word embeddings. mask_dtype: the ONNX element type of
    ``attention_mask`` (int64 by default), which the extended mask keeps.
    """
    spec = module_spec(module)
    dtype = export_dtype(dtype)
    if mask_dtype not in MASK_DTYPES:
        names = [TensorProto.DataType.Name(t) for t in MASK_DTYPES]
        raise InputError(f"mask_dtype: expected one of {names}, got {mask_dtype!r}")
    w = _check_word_embeddings(word_embeddings, spec.D)
    n_prompt, subs = _submodules(module)
    if n_prompt * subs != spec.T:  # pragma: no cover - the module classes keep T = N·S
        raise InputError(f"module: expected T = N·S = {n_prompt * subs} rows, got T={spec.T}")
    prompt = build_model(spec, variant=variant, dtype=dtype)
    front = _front(spec, w, dtype, mask_dtype, n_prompt)
    io_map = [("prompt_indices", INPUT_INDICES)]
    if spec.kind.takes_task_ids:
        io_map.append(("prompt_task_ids", INPUT_TASK_IDS))
    # the prefixed front graph keeps its output names; its internal ones start with FRONT_PREFIX
    model = compose.merge_models(front, prompt, io_map=io_map, producer_name="mpt-ref onnx_export")
    model = compose.merge_models(model, _back(spec, dtype, n_prompt), io_map=[(OUTPUT, OUTPUT),
                                                                              (TOKEN_EMBEDS, TOKEN_EMBEDS)],
                                 producer_name="mpt-ref onnx_export")
    dedupe_opsets(model)
    _order_outputs(model.graph, [INPUTS_EMBEDS, EXTENDED_MASK])
    model.graph.name = f"mpt_ref_prepend_{spec.kind.value}"
    doc = (f"mpt-ref prompt prepend ({spec.kind}, variant={variant}, dtype={dtype}): inputs_embeds = "
           f"concat(prompt[:, :{n_prompt}], W[input_ids]), extended_attention_mask = concat(ones(B, {n_prompt}), "
           "attention_mask), as PEFT's forward builds them. Invalid ids give NaN rows (spec/serving.md).")
    model.graph.doc_string = doc
    model.doc_string = doc
    meta = {p.key: p.value for p in prompt.metadata_props}
    meta.update({META_PREFIX + "prepend.num_virtual_tokens": str(n_prompt),
                 META_PREFIX + "prepend.num_transformer_submodules": str(subs),
                 META_PREFIX + "prepend.vocab_size": str(w.shape[0]),
                 META_PREFIX + "spec_version": SPEC_VERSION, META_PREFIX + "mpt_ref_version": __version__})
    del model.metadata_props[:]
    helper.set_model_props(model, meta)
    return check(model)


def dedupe_opsets(model: onnx.ModelProto) -> None:
    """One opset_import entry per domain (onnx.compose.merge_models concatenates both models' lists)."""
    seen: dict[str, int] = {}
    for entry in model.opset_import:
        if seen.setdefault(entry.domain, entry.version) != entry.version:  # pragma: no cover - merge_models refuses
            raise InputError(f"opset_import: expected one version of domain {entry.domain!r}, got "
                             f"{seen[entry.domain]} and {entry.version}")
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in seen.items())


def _order_outputs(graph: onnx.GraphProto, names: list[str]) -> None:
    by_name = {o.name: o for o in graph.output}
    if set(by_name) != set(names):  # pragma: no cover - the composition above fixes the outputs
        raise InputError(f"prepend graph: expected outputs {names}, got {sorted(by_name)}")
    ordered = [onnx.ValueInfoProto() for _ in names]
    for proto, name in zip(ordered, names):
        proto.CopyFrom(by_name[name])
    del graph.output[:]
    graph.output.extend(ordered)
