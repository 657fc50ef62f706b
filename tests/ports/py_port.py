"""A port process in Python speaking spec/conform-protocol.md, with failure modes for the protocol tests.

    python py_port.py MODE            persistent: case directories on stdin, one reply line each
    python py_port.py MODE CASE_DIR   one case (conform --per-case)

MODE: correct (mpt_ref.conformance.example_port: mpt-ref's own NumPy core), zeros (a trivial port: outputs and gradients of zeros, for
throughput), crash (exits on the 3rd case), hang (never answers the 2nd case), garbage (prints a log line
on stdout), error (replies "error ..."), out_key (saves the output under "out"), train (LSTM dropout
applied in eval calls: random masks).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from mpt_ref.conformance import example_port

MODE = sys.argv[1]


def compute(case_dir: Path) -> None:
    rec = json.loads((case_dir / "case.json").read_text())
    params = load_file(str(case_dir / "params.safetensors"))
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    dtype = np.dtype(rec["dtype"])
    dout = inputs["grad_output"]
    if MODE == "zeros":
        out, grads = np.zeros(dout.shape, dtype), {k: np.zeros_like(v) for k, v in params.items()}
    else:
        sizes = rec.get("sizes", {})
        if MODE == "train" and not sizes.get("num_dropout_masks") and sizes.get("L", 1) >= 2 and sizes["dropout_p"] > 0:
            rng = np.random.default_rng()  # dropout applied in an eval call: fresh random masks every call
            idx = inputs["indices"]
            inputs = {**inputs, **{f"dropout_mask_{k}": rng.random(idx.shape + (2 * sizes["H"],)) >= sizes["dropout_p"]
                                   for k in range(sizes["L"] - 1)}}
            rec = {**rec, "sizes": {**sizes, "num_dropout_masks": sizes["L"] - 1}}
        out, grads = example_port.compute(rec, params, inputs)
        out = out.astype(dtype)
        grads = {k: v.astype(dtype) for k, v in grads.items()}
    save_file({"out" if MODE == "out_key" else "output": np.ascontiguousarray(out)}, str(case_dir / "output.safetensors"))
    if rec["gradients"]:
        save_file({k: np.ascontiguousarray(v) for k, v in grads.items()}, str(case_dir / "grads.safetensors"))


def main() -> int:
    if len(sys.argv) > 2:
        compute(Path(sys.argv[2]))
        return 0
    for n, line in enumerate(sys.stdin, 1):
        if MODE == "crash" and n == 3:
            print("segfault-ish: giving up", file=sys.stderr)
            return 7
        if MODE == "hang" and n == 2:
            time.sleep(3600)
        if MODE == "garbage":
            print("loading weights...", flush=True)
            continue
        if MODE == "error":
            print("error no such kernel", flush=True)
            continue
        compute(Path(line.strip()))
        print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
