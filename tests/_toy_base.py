"""The toy base model the serving tests prepend prompts to, built by hand with onnx.helper (no torch):

    logits = (inputs_embeds * attention_mask[..., None]) @ U        (batch, seq, D) -> (batch, seq, C)
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper


def masked_matmul_base(U: np.ndarray, *, dim: int | None = None, float_type: int = TensorProto.FLOAT,
                       mask_type: int = TensorProto.INT64, names: tuple[str, str] = ("inputs_embeds", "attention_mask"),
                       batch: str = "batch", seq: str = "seq", opset: int = 17, ir_version: int = 8,
                       name: str = "toy_base") -> ModelProto:
    """U (D, C) in the graph's float type; ``dim``: the declared embedding width (default D; another value
    makes a base whose input does not fit U, for the refusal tests); ``names``: (embeddings, mask) inputs."""
    x = helper.make_tensor_value_info(names[0], float_type, [batch, seq, U.shape[0] if dim is None else dim])
    m = helper.make_tensor_value_info(names[1], mask_type, [batch, seq])
    y = helper.make_tensor_value_info("logits", float_type, [batch, seq, U.shape[1]])
    nodes = [helper.make_node("Cast", [names[1]], ["mf"], to=float_type),
             helper.make_node("Unsqueeze", ["mf", "axis2"], ["m3"]),
             helper.make_node("Mul", [names[0], "m3"], ["masked"]),
             helper.make_node("MatMul", ["masked", "U"], ["logits"])]
    inits = [numpy_helper.from_array(U, "U"), numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2")]
    return helper.make_model(helper.make_graph(nodes, name, [x, m], [y], initializer=inits),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
