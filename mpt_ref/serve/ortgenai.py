"""onnxruntime-genai serving a prompt adapter (spec/serving.md, "onnxruntime-genai").

onnxruntime-genai's generator takes token ids only. The prompt enters through the id rule TensorRT-LLM's
prompt table uses: the base model's decoder is built without its embedding layer (the model builder's
``exclude_embeds=true``: the graph takes ``inputs_embeds``), and a small embedding graph in front of it
holds the word embeddings W (V, D) with the flattened (K·T, D) prompt table appended,

    id x < V             -> W[x]
    id V + k·T + j       -> row j of task k's prompt (0 <= j < T)
    any other id         -> a NaN row (never a silently wrong embedding; spec/onnx.md's id policy)

so a request for task k is ``[V + k·T + j for j < N] + the user's ids``: exactly PEFT's
``concat(prompt_k[:N], W[ids])``. The two graphs run as onnxruntime-genai's ``decoder-pipeline`` model
(``model.decoder.pipeline`` in genai_config.json: the embedding stage, then the decoder), on prompt and on
every generated token.

``write_ortgenai`` writes a complete onnxruntime-genai model folder as one set (mpt_ref/io/staged.py):
``embeddings.onnx``, ``genai_config.json`` (the decoder's, turned into the pipeline), ``prompt_ids.json``
(the ids of each task's prompt) and the decoder's own files (hard links where possible).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from mpt_ref import _checks
from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.errors import IndexRangeError, InputError, OutputExistsError
from mpt_ref.io.staged import StagedSet
from mpt_ref.serve.prompt_table import prompt_table
from onnx_export._faithful import lookup
from onnx_export._graph import GraphBuilder
from onnx_export.opset import IR_VERSION, OPSET

EMBEDDINGS_FILE, CONFIG_FILE, IDS_FILE = "embeddings.onnx", "genai_config.json", "prompt_ids.json"
INPUT_IDS, INPUTS_EMBEDS = "input_ids", "inputs_embeds"
ID_RULE = ("id x < V reads W[x]; id V + k*T + j (0 <= j < T) reads row j of task k's prompt, row k*T + j of the "
           "flattened (K*T, D) prompt table; any other id reads a NaN row")


def extended_table(table: Any, word_embeddings: Any) -> np.ndarray:
    """(V + K·T, D): W, then the (K, T, D) prompt table flattened task-major, in the table's dtype."""
    t, w = np.asarray(table), np.asarray(word_embeddings)
    if t.ndim != 3 or w.ndim != 2 or t.shape[2] != w.shape[1]:
        raise InputError(f"table, word_embeddings: expected (K, T, D) and (V, D) with one D, got shapes {t.shape} "
                         f"and {w.shape}")
    return np.concatenate([w.astype(t.dtype), t.reshape(-1, t.shape[2])], axis=0)


def prompt_ids(vocab_size: int, task_vocab_size: int, task: int, num_virtual_tokens: int | None = None) -> list[int]:
    """The ids that put task ``task``'s prompt in front of a request: [V + task·T + j for j < N]."""
    V = _checks.positive_int("vocab_size", vocab_size)
    T = _checks.positive_int("task_vocab_size", task_vocab_size)
    N = T if num_virtual_tokens is None else _checks.positive_int("num_virtual_tokens", num_virtual_tokens)
    if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or task < 0:
        raise IndexRangeError(f"task: expected a task id >= 0, got {task!r}")
    return [V + int(task) * T + j for j in range(min(N, T))]


def embedding_model(table: Any, word_embeddings: Any) -> onnx.ModelProto:
    """The embedding graph: input_ids int64 (batch, sequence) -> inputs_embeds (batch, sequence, D)."""
    ext = extended_table(table, word_embeddings)
    g = GraphBuilder(ext.dtype)
    rows, D = ext.shape
    name = g.weight("embedding_table", ext)
    out = lookup(g, name, rows, (D,), INPUT_IDS, "input_ids")
    g.nodes.append(helper.make_node("Identity", [out], [INPUTS_EMBEDS], name="inputs_embeds/Identity"))
    elem = TensorProto.FLOAT16 if ext.dtype == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(g.nodes, "mpt_ref_ortgenai_embeddings",
                              [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"])],
                              [helper.make_tensor_value_info(INPUTS_EMBEDS, elem, ["batch", "sequence", D])],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="mpt-ref")
    model.doc_string = f"mpt-ref embedding graph for onnxruntime-genai: {ID_RULE} (spec/serving.md)"
    helper.set_model_props(model, {"mpt_ref.spec_version": SPEC_VERSION, "mpt_ref.mpt_ref_version": __version__})
    onnx.checker.check_model(model)
    return model


def _decoder(decoder_dir: Path) -> tuple[dict[str, Any], list[str], list[str], str]:
    """(genai config, decoder graph inputs, outputs, decoder filename) of a model-builder folder built with
    exclude_embeds=true; refused otherwise."""
    config_path = decoder_dir / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"--decoder: expected an onnxruntime-genai model folder with {CONFIG_FILE}, got {decoder_dir}")
    try:
        config = json.loads(config_path.read_text())
        decoder = config["model"]["decoder"]
        filename = decoder["filename"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{config_path}: expected model.decoder.filename in a JSON object, got "
                         f"{type(exc).__name__}: {exc}") from None
    if "pipeline" in decoder or config["model"].get("type") == "decoder-pipeline":
        raise InputError(f"{config_path}: expected a plain decoder (the model builder's output), got a pipeline")
    if Path(filename).name != filename or not (decoder_dir / filename).is_file():
        raise InputError(f"{config_path}: expected the decoder file {filename!r} in {decoder_dir}")
    graph = onnx.load(str(decoder_dir / filename), load_external_data=False).graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if INPUTS_EMBEDS not in inputs or INPUT_IDS in inputs:
        raise InputError(f"{decoder_dir / filename}: expected a decoder taking {INPUTS_EMBEDS} (build it with "
                         f"--extra_options exclude_embeds=true), got inputs {inputs}")
    return config, inputs, [o.name for o in graph.output], filename


def pipeline_config(config: dict[str, Any], decoder_inputs: list[str], decoder_outputs: list[str]) -> dict[str, Any]:
    """The decoder's genai_config turned into a decoder-pipeline: the embedding stage, then the decoder."""
    out = json.loads(json.dumps(config))
    model = out["model"]
    decoder = model["decoder"]
    filename = decoder.pop("filename")
    decoder["inputs"] = {k: v for k, v in decoder.get("inputs", {}).items() if k != INPUTS_EMBEDS}
    decoder["inputs"][INPUT_IDS] = INPUT_IDS
    stage_options = {"session_options": decoder["session_options"]} if "session_options" in decoder else {}
    decoder["pipeline"] = [
        {"embeddings": {"filename": EMBEDDINGS_FILE, "inputs": [INPUT_IDS], "outputs": [INPUTS_EMBEDS],
                        "run_on_prompt": True, "run_on_token_gen": True, **stage_options}},
        {"decoder": {"filename": filename, "inputs": decoder_inputs, "outputs": decoder_outputs,
                     "run_on_prompt": True, "run_on_token_gen": True, **stage_options}},
    ]
    model["type"] = "decoder-pipeline"
    return out


def ids_sidecar(module: Any, table: np.ndarray, V: int) -> dict[str, Any]:
    K, T, D = table.shape
    N = int(module.config.num_virtual_tokens)
    return {"format": "mpt-ref onnxruntime-genai prompt ids 1", "vocab_size": V, "task_vocab_size": T,
            "num_virtual_tokens": N, "num_tasks": K, "token_dim": D, "id_rule": ID_RULE,
            "prompt_ids": [prompt_ids(V, T, k, N) for k in range(K)],
            "usage": "generator.append_tokens(prompt_ids[k] + the user's token ids) for a request of task k",
            "spec_version": SPEC_VERSION, "mpt_ref_version": __version__}


def check_ortgenai(module: Any, word_embeddings: np.ndarray, directory: str | os.PathLike) -> OrtGenaiReport:
    """Read the set back: embeddings.onnx on onnxruntime for every task's prompt ids and some token ids equals
    the float64 reference prompt rounded once (the prompt-table rule) and W, bit for bit; an id past the
    table gives NaN; genai_config.json's pipeline names the files of the set; prompt_ids.json follows the rule."""
    import onnxruntime as ort

    directory = Path(directory)
    problems: list[str] = []
    table = prompt_table(module)  # K,T,D: the float64 reference rounded once
    K, T, _ = table.shape
    V = word_embeddings.shape[0]
    N = int(module.config.num_virtual_tokens)
    session = ort.InferenceSession(str(directory / EMBEDDINGS_FILE), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for k in range(K):
        tokens = rng.integers(0, V, size=5)
        ids = np.array([prompt_ids(V, T, k, N) + tokens.tolist()], dtype=np.int64)
        got = session.run(None, {INPUT_IDS: ids})[0][0]
        want = np.concatenate([table[k, :N], word_embeddings.astype(table.dtype)[tokens]])
        if got.shape != want.shape or not np.array_equal(got, want):
            problems.append(f"{EMBEDDINGS_FILE}: task {k}: expected the prompt rows then W[ids] bit for bit, got "
                            f"max |diff| {float(np.abs(got.astype(np.float64) - want).max()):.3g}")
    bad = session.run(None, {INPUT_IDS: np.array([[V + K * T, -1]], dtype=np.int64)})[0]
    if not np.isnan(bad).all():
        problems.append(f"{EMBEDDINGS_FILE}: expected NaN rows for ids outside [0, V + K*T), got numbers")
    config = json.loads((directory / CONFIG_FILE).read_text())
    stages = config["model"]["decoder"].get("pipeline", [])
    files = [next(iter(s.values()))["filename"] for s in stages]
    if config["model"].get("type") != "decoder-pipeline" or not files or files[0] != EMBEDDINGS_FILE or not all(
            (directory / f).is_file() for f in files):
        problems.append(f"{CONFIG_FILE}: expected a decoder-pipeline whose stages name files of the set, got {files}")
    sidecar = json.loads((directory / IDS_FILE).read_text())
    if sidecar.get("prompt_ids") != [prompt_ids(V, T, k, N) for k in range(K)]:
        problems.append(f"{IDS_FILE}: expected prompt ids by the rule V + k*T + j, got {sidecar.get('prompt_ids')}")
    return OrtGenaiReport(str(directory), K, problems)


class OrtGenaiReport:
    def __init__(self, directory: str, tasks: int, problems: list[str]) -> None:
        self.directory, self.tasks, self.problems = directory, tasks, problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"check: {self.directory} read back: embeddings.onnx on onnxruntime for each of {self.tasks} task(s) "
                 "(prompt ids then token ids) vs the float64 reference rounded once and W: bit for bit; ids past the "
                 "table: NaN; genai_config.json pipeline and prompt_ids.json consistent"]
        lines += [f"  FAIL: {p}" for p in self.problems]
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def write_ortgenai(module: Any, word_embeddings: Any, decoder_dir: str | os.PathLike, directory: str | os.PathLike,
                   *, overwrite: bool = False) -> tuple[OrtGenaiReport, Path]:
    """Write the onnxruntime-genai model folder ``directory`` (module docstring) as one set, checked before it
    is swapped into place. ``decoder_dir``: the model builder's output for the base model, built with
    ``exclude_embeds=true``; its vocabulary and hidden size must be W's."""
    w = np.asarray(word_embeddings)
    decoder_dir = Path(decoder_dir)
    target = Path(directory)
    if target.is_dir() and any(target.iterdir()) and not overwrite:  # refuse before any work
        raise OutputExistsError(f"{target}: expected a new directory, got an existing one (pass overwrite=True / --force)")
    task_type = getattr(module.config.task_type, "value", module.config.task_type)
    if task_type == "SEQ_2_SEQ_LM":
        raise InputError("adapter: expected a decoder-only adapter (CAUSAL_LM) for onnxruntime-genai's decoder "
                         "pipeline, got SEQ_2_SEQ_LM (its prompt goes to the encoder)")
    config, inputs, outputs, filename = _decoder(decoder_dir)
    model_cfg = config["model"]
    V, D = w.shape
    if model_cfg.get("vocab_size") != V or model_cfg["decoder"].get("hidden_size") != D:
        raise InputError(f"--decoder: expected vocab_size {V} and hidden_size {D} (the base weights' W), got "
                         f"{model_cfg.get('vocab_size')} and {model_cfg['decoder'].get('hidden_size')}")
    table = prompt_table(module)
    if table.shape[2] != D:
        raise InputError(f"adapter: expected token_dim {D} (the base model's hidden size), got {table.shape[2]}")
    files = {EMBEDDINGS_FILE: embedding_model(table, w).SerializeToString(),
             CONFIG_FILE: (json.dumps(pipeline_config(config, inputs, outputs), indent=4) + "\n").encode(),
             IDS_FILE: (json.dumps(ids_sidecar(module, table, V), indent=2) + "\n").encode()}
    linked = sorted(p.name for p in decoder_dir.iterdir() if p.is_file() and p.name not in files)
    if any((decoder_dir / p).is_dir() for p in os.listdir(decoder_dir)):
        raise InputError(f"--decoder: expected a flat model folder, got subdirectories in {decoder_dir}")
    with StagedSet(target, names=[*files, *linked], overwrite=overwrite) as stage:
        for name, data in files.items():
            stage.write(name, data)
        for name in linked:
            stage.add_file(name, decoder_dir / name)
        report = check_ortgenai(module, w, stage.path)
        report.directory = str(target)
        if report.ok:
            stage.commit()
    return report, target
