"""The smallest port that speaks spec/conform-protocol.md, computed by mpt-ref's own NumPy core.

    python -m mpt_ref.conformance.example_port            persistent: case directories on stdin, one reply each
    python -m mpt_ref.conformance.example_port CASE_DIR   one case (``conform --per-case``)

It shows a porter the protocol end to end (read case.json, params.safetensors and inputs.safetensors;
write output.safetensors and, when asked, grads.safetensors; reply ``ok`` or ``error <message>``), and
stands in for a real port in the README's commands. Replace ``compute`` with calls into your port.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from mpt_ref.core.embedding import embedding_backward, embedding_forward
from mpt_ref.core.encoder import prompt_encoder_backward, prompt_encoder_forward
from mpt_ref.core.mpt import mpt_backward, mpt_forward


def compute(case: dict, params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(output, {PEFT key: gradient}) of one case, in float64."""
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    dout, idx = inputs["grad_output"].astype(np.float64), inputs["indices"]  # (B, T, D), (B, T)
    if case["module"] == "mpt":
        out, cache = mpt_forward(p64, idx, inputs["task_ids"])
        return out, mpt_backward(dout, cache)
    if case["module"] == "prompt_embedding":
        out, cache = embedding_forward(p64["embedding.weight"], idx)
        return out, {"embedding.weight": embedding_backward(dout, cache)}
    sizes = case["sizes"]
    masks = [inputs[f"dropout_mask_{k}"] for k in range(sizes["num_dropout_masks"])]  # train mode only
    scales = [m / (1 - sizes["dropout_p"]) for m in masks] or None
    kind = "LSTM" if case["module"] == "lstm_encoder" else "MLP"
    out, cache = prompt_encoder_forward(p64, idx, encoder_type=kind, num_layers=sizes["L"], dropout_scales=scales)
    return out, prompt_encoder_backward(dout, cache)


def answer(case_dir: Path) -> None:
    case = json.loads((case_dir / "case.json").read_text())
    out, grads = compute(case, load_file(str(case_dir / "params.safetensors")),
                         load_file(str(case_dir / "inputs.safetensors")))
    dtype = np.dtype(case["dtype"])  # results in the case's dtype
    save_file({"output": np.ascontiguousarray(out.astype(dtype))}, str(case_dir / "output.safetensors"))
    if case["gradients"]:
        save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in grads.items()},
                  str(case_dir / "grads.safetensors"))


def main(argv: list[str]) -> int:
    if argv:
        answer(Path(argv[0]))
        return 0
    for line in sys.stdin:
        try:
            answer(Path(line.strip()))
        except Exception as exc:  # noqa: BLE001 - the protocol's error reply, one line
            print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
            continue
        print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
