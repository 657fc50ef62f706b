"""The runtime x graph table and the bad-id table of spec/onnx.md ("runtimes"), measured.

    PYTHONPATH=. python tests/runtime_matrix.py --provider openvino [--quick] [--json out.json]

Graphs: every module (prompt_embedding, mpt, mlp_encoder, lstm_encoder) x variant (faithful, folded,
folded-any) x dtype (float32, float16) for a default and a non-default config, the golden
``spec/vectors/<case>/onnx/test_<case>/model.onnx`` files, and whole models (the prompt-prepend graph
composed with a small base graph, as ``export-model`` composes a real one). Each graph runs the parity
cases (PEFT rows, a length-1 task broadcast, random rows, invalid ids) at B = 1, 3 and 17, judged by the
error model (onnx_export/parity.py). Verdicts per graph:

    right    every case within the bound, NaN exactly where the id policy puts it
    wrong    a result outside the bound or a NaN policy broken
    refused  the runtime raised an error loading or running the graph (the reason is kept)
    crash    the process died (a panic or a signal) while loading or running it

The bad-id table: per id value (negative, = the limit, 2^31, 2^32 + 1, 2^40, ...) and id kind (token
index, MPT task id, whole-model input id), how many graphs give NaN where it lands (held), a finite
value (wrong), or an error (refused). Graphs run in a worker process, restarted after a crash.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODULES = ("prompt_embedding", "mpt", "mlp_encoder", "lstm_encoder")
VARIANTS = ("faithful", "folded", "folded-any")
DTYPES = ("float32", "float16")
BATCHES = (1, 3, 17)
# id values a caller may send by mistake; "limit" is T (indices), K (task ids) or V (input ids)
BAD_IDS = ("-1", "limit", "limit+1", "2^31", "2^32+1", "2^32+limit", "2^40", "-2^32+1", "int64 max", "int64 min")


def bad_value(name: str, limit: int) -> int:
    return {"-1": -1, "limit": limit, "limit+1": limit + 1, "2^31": 2 ** 31, "2^32+1": 2 ** 32 + 1,
            "2^32+limit": 2 ** 32 + limit, "2^40": 2 ** 40, "-2^32+1": -2 ** 32 + 1,
            "int64 max": 2 ** 63 - 1, "int64 min": -2 ** 63}[name]


def _configs(kind: str) -> list[tuple[str, dict[str, Any]]]:
    from mpt_ref.conformance.cases import _enc, _mpt, _pt

    return {
        "prompt_embedding": [("default", _pt(num_virtual_tokens=4, token_dim=5)),
                             ("wide", _pt(num_virtual_tokens=5, token_dim=33))],
        "mpt": [("default", _mpt(num_virtual_tokens=4, token_dim=6, num_tasks=3, num_ranks=2)),
                ("seq2seq", _mpt(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=4, num_tasks=2,
                                 num_ranks=3))],
        "mlp_encoder": [("default", _enc("MLP", num_virtual_tokens=3, token_dim=4, encoder_hidden_size=5)),
                        ("wide", _enc("MLP", num_virtual_tokens=4, token_dim=33, encoder_hidden_size=17))],
        "lstm_encoder": [("default", _enc("LSTM", num_virtual_tokens=3, token_dim=4, encoder_hidden_size=5,
                                          encoder_num_layers=2)),
                         ("l3", _enc("LSTM", task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=3,
                                     encoder_hidden_size=4, encoder_num_layers=3))],
    }[kind]


def _module(kind: str, config: dict[str, Any], seed: int = 0) -> Any:
    from mpt_ref.conformance.cases import MODULE_CLASSES
    from mpt_ref.modules.config import config_from_dict
    from mpt_ref.kind import Kind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = MODULE_CLASSES[Kind.parse(kind)](config_from_dict(config), seed=seed)
    return module.eval() if hasattr(module, "eval") else module


def graph_names(quick: bool = False) -> list[str]:
    """Every graph, named module/config/variant/dtype, golden/<case>, whole/<kind>."""
    from mpt_ref.conformance.cases import CASES

    names = [f"{kind}/{cfg}/{variant}/{dtype}" for kind in MODULES for cfg, _ in _configs(kind)[: 1 if quick else 2]
             for variant in VARIANTS for dtype in DTYPES]
    golden = [c.name for c in CASES if (ROOT / "spec/vectors" / c.name / "onnx" / f"test_{c.name}").is_dir()]
    names += [f"golden/{c}" for c in (golden[::6] if quick else golden)]
    names += ["whole/mpt", "whole/lstm_encoder"]
    return names


def build_graph(name: str) -> tuple[Any, Any, str, str]:
    """(model, module, variant, dtype) of a graph name."""
    import onnx

    import onnx_export

    parts = name.split("/")
    if parts[0] == "golden":
        from mpt_ref.conformance.cases import CASES, build_case_module

        spec = next(c for c in CASES if c.name == parts[1])
        model = onnx.load(str(ROOT / "spec/vectors" / spec.name / "onnx" / f"test_{spec.name}" / "model.onnx"))
        return model, build_case_module(spec), "faithful", "float32"
    if parts[0] == "whole":
        return _whole_model(parts[1]), _whole_module(parts[1]), "folded", "float32"
    kind, cfg, variant, dtype = parts
    module = _module(kind, dict(_configs(kind))[cfg])
    return onnx_export.export(module, variant=variant, dtype=dtype), module, variant, dtype


# --- whole models: prepend graph + a base graph logits = (inputs_embeds * mask) @ U -----------------------

V_WORDS, U_COLS = 11, 7


def _whole_module(kind: str) -> Any:
    return _module(kind, dict(_configs(kind))["default"], seed=1)


def _whole_weights(D: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.normal(size=(V_WORDS, D)).astype(np.float32), rng.normal(size=(D, U_COLS)).astype(np.float32)


def _whole_model(kind: str) -> Any:
    from _toy_base import masked_matmul_base

    from mpt_ref.serve.whole_model import compose_model

    module = _whole_module(kind)
    W, U = _whole_weights(module.token_dim)
    base = masked_matmul_base(U, opset=21, ir_version=10)
    return compose_model(module, base, W)


def _whole_cases(module: Any, batch: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(batch)
    S = 5
    feeds = {"input_ids": rng.integers(0, V_WORDS, (batch, S)), "attention_mask": np.ones((batch, S), np.int64)}
    if hasattr(module, "num_tasks"):
        feeds["task_ids"] = np.arange(batch) % module.num_tasks
    return [(f"whole model, B={batch}", feeds)]


def _whole_expected(module: Any, feeds: dict[str, np.ndarray], provider: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 logits (NaN at an invalid input id's position, on the prompt positions of an invalid task) and
    their error-model bound per entry: the folded prompt's bounds for a float32 graph on ``provider``
    (parity's), carried through (embeds * mask) @ U by the same algebra; the word rows are exact."""
    from mpt_ref.judge.error_bound import Bounded, ErrorAlgebra
    from onnx_export._spec import module_spec
    from onnx_export.parity import expected_with_bound, onnx_rounding

    W, U = (a.astype(np.float64) for a in _whole_weights(module.token_dim))
    ids = feeds["input_ids"]
    B, T = ids.shape[0], module.total_virtual_tokens
    ok = (ids >= 0) & (ids < V_WORDS)
    words = W[np.where(ok, ids, 0)]
    words[~ok] = np.nan
    prompt_feeds = {"indices": np.tile(np.arange(T), (B, 1))}
    if hasattr(module, "num_tasks"):
        prompt_feeds["task_ids"] = np.broadcast_to(feeds["task_ids"], (B,))
    rounding = onnx_rounding("float32", provider)
    prompt, bound = expected_with_bound(module_spec(module), prompt_feeds, "folded", rounding)
    alg = ErrorAlgebra(rounding)
    e = np.concatenate([bound, np.zeros_like(words)], axis=1)
    embeds = Bounded(np.concatenate([prompt, words], axis=1), e, e)  # s = e: the worst case stands for both
    mask = alg.exact(np.concatenate([np.ones((B, T)), feeds["attention_mask"]], axis=1)[..., None])
    logits = alg.matmul(alg.mul(embeds, mask), alg.exact(U))
    return logits.v, logits.bound(alg.lam)


def _judge_whole(name: str, provider: str, got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> tuple[bool, str]:
    from mpt_ref.judge.bounds import check_tensor

    check = check_tensor(name, "logits", got, want, bound, provider=provider, nan_expected=True)
    return check.ok, "" if check.ok else f"{name}: {check.describe()}"


# --- one graph on one provider ------------------------------------------------------------------------------

def _feeds_cases(module: Any, variant: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    from onnx_export._spec import module_spec
    from onnx_export.parity import parity_cases

    spec = module_spec(module)
    cases: list[tuple[str, dict[str, np.ndarray]]] = []
    for b in BATCHES:
        cases += parity_cases(spec, variant, batch=b, seed=b)
    return cases


def _bad_id_feeds(module: Any, variant: str, which: str, value: int) -> tuple[dict[str, np.ndarray], int] | None:
    """Feeds for B = 3 with one bad id of ``which`` kind (indices / task_ids) in row 1; None if n/a."""
    from onnx_export._spec import module_spec

    spec = module_spec(module)
    T = spec.T
    idx = np.tile(np.arange(T, dtype=np.int64), (3, 1))
    feeds: dict[str, np.ndarray] = {"indices": idx}
    if spec.kind == "mpt":
        feeds["task_ids"] = np.arange(3, dtype=np.int64) % spec.K
    if which == "task_ids":
        if spec.kind != "mpt":
            return None
        feeds["task_ids"][1] = value
    else:
        idx[1, T - 1] = value
    return feeds, 1


def run_graph(name: str, provider: str) -> dict[str, Any]:
    """{verdict, reason, bad_ids: {kind/value: held|wrong|refused}} of one graph on one provider."""
    from onnx_export.parity import run_cases
    from onnx_export.runtimes import Runner
    from onnx_export._spec import module_spec

    model, module, variant, dtype = build_graph(name)
    try:
        runner = Runner(model, provider)
    except Exception as exc:  # noqa: BLE001 - a runtime refusing the file is a result
        return {"graph": name, "verdict": "refused", "reason": f"load: {type(exc).__name__}: {str(exc)[:160]}"}
    result: dict[str, Any] = {"graph": name, "verdict": "right", "reason": "", "bad_ids": {}}
    whole = name.startswith("whole/")
    if whole:
        for case, feeds in [c for b in BATCHES for c in _whole_cases(module, b)]:
            try:
                got = runner.run(feeds)
            except Exception as exc:  # noqa: BLE001
                return {**result, "verdict": "refused", "reason": f"{case}: {type(exc).__name__}: {str(exc)[:160]}"}
            ok, why = _judge_whole(case, provider, got, *_whole_expected(module, feeds, provider))
            if not ok:
                result.update(verdict="wrong", reason=why)
    else:
        spec = module_spec(module)
        checks = run_cases(model, spec, _feeds_cases(module, variant), [provider], dtype=dtype, variant=variant)
        bad = [c for c in checks if not c.ok]
        if bad:
            refused = all(c.note and not c.bad for c in bad)
            result.update(verdict="refused" if refused else "wrong", reason=f"{bad[0].case}: {bad[0].describe()}"[:240])
    result["bad_ids"] = _bad_ids(runner, module, variant, whole)
    return result


def _bad_ids(runner: Any, module: Any, variant: str, whole: bool) -> dict[str, str]:
    from onnx_export._spec import module_spec

    out = {}
    spec = module_spec(module)
    kinds = ["input_ids", "task_ids"] if whole else ["indices", "task_ids"]
    for which in kinds:
        for label in BAD_IDS:
            if whole:
                if which == "task_ids" and spec.kind != "mpt":
                    continue
                feeds = _whole_cases(module, 3)[0][1]
                limit = V_WORDS if which == "input_ids" else spec.K
                feeds[which] = feeds[which].copy()
                if which == "input_ids":
                    feeds[which][1, 2] = bad_value(label, limit)
                else:
                    feeds[which][1] = bad_value(label, limit)
                try:
                    got = runner.run(feeds)
                except Exception:  # noqa: BLE001
                    out[f"{which}/{label}"] = "refused"
                    continue
                hit = got[1, spec.T + 2] if which == "input_ids" else got[1, : spec.T]
            else:
                made = _bad_id_feeds(module, variant, which, 0)
                if made is None:
                    continue
                feeds, row = made
                limit = spec.T if which == "indices" else spec.K
                if which == "indices":
                    feeds["indices"][row, spec.T - 1] = bad_value(label, limit)
                else:
                    feeds["task_ids"][row] = bad_value(label, limit)
                try:
                    got = runner.run(feeds)
                except Exception:  # noqa: BLE001
                    out[f"{which}/{label}"] = "refused"
                    continue
                hit = got[row, spec.T - 1] if which == "indices" else got[row]
            out[f"{which}/{label}"] = "held" if np.isnan(hit).all() else "wrong"
    return out


# --- the worker protocol and the tables ---------------------------------------------------------------------

def _worker(provider: str, names: list[str]) -> None:
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        print(json.dumps(run_graph(name, provider)), flush=True)


def measure(provider: str, names: list[str], python: str = sys.executable) -> list[dict[str, Any]]:
    """Every graph on ``provider``, in worker processes restarted after a crash."""
    results: list[dict[str, Any]] = []
    todo = list(names)
    while todo:
        proc = subprocess.run([python, __file__, "--worker", "--provider", provider, *todo],
                              capture_output=True, text=True, cwd=ROOT)
        started = None
        done = set()
        for line in proc.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "start" in msg:
                started = msg["start"]
            else:
                results.append(msg)
                done.add(msg["graph"])
        todo = [n for n in todo if n not in done]
        if proc.returncode == 0 or not todo:
            break
        crashed = started if started in todo else todo[0]
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:160]
        results.append({"graph": crashed, "verdict": "crash", "reason": f"exit {proc.returncode}: {tail}", "bad_ids": {}})
        todo.remove(crashed)
    order = {n: i for i, n in enumerate(names)}
    return sorted(results, key=lambda r: order[r["graph"]])


def graph_table(provider: str, results: list[dict[str, Any]]) -> str:
    counts = collections.Counter(r["verdict"] for r in results)
    lines = [f"{provider}: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in ("right", "wrong", "refused", "crash"))
             + f" of {len(results)} graphs"]
    lines += [f"  {r['verdict']:<8} {r['graph']}: {r['reason']}" for r in results if r["verdict"] != "right"]
    return "\n".join(lines)


def bad_id_table(provider: str, results: list[dict[str, Any]]) -> str:
    tally: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        for key, outcome in (r.get("bad_ids") or {}).items():
            tally[key][outcome] += 1
    lines = [f"{provider} bad ids (graphs: held NaN / wrong finite / refused):"]
    for key in sorted(tally, key=lambda k: (k.split("/")[0], BAD_IDS.index(k.split("/")[1]))):
        c = tally[key]
        lines.append(f"  {key:<24} {c['held']:>3} / {c['wrong']:>3} / {c['refused']:>3}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", required=True, help="a provider of onnx_export.runtimes.PROVIDERS")
    p.add_argument("--quick", action="store_true", help="one config per module, every sixth golden graph")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every graph is right or refused")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("graphs", nargs="*", help="graph names (default: all)")
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.provider, args.graphs)
        return 0
    results = measure(args.provider, args.graphs or graph_names(args.quick))
    print(graph_table(args.provider, results))
    print(bad_id_table(args.provider, results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.strict and any(r["verdict"] in ("wrong", "crash") for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
