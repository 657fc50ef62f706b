"""Serving against real PEFT: the composed whole model (prompt prepend + base ONNX) on onnxruntime CPU
gives PeftModel's logits, and the TensorRT-LLM prompt-table lookup gives PEFT's prepended embeddings.

Tiny GPT-2 and Llama models are built from configs (no downloads) and exported with
``torch.onnx.export`` (the TorchScript exporter: inputs_embeds, attention_mask -> logits). Each
adapter type (PT, MPT, P-tuning MLP and LSTM) is trained a few steps with PEFT, saved with
``save_pretrained`` and reloaded with ``PeftModel.from_pretrained``: that model is the reference.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from mpt_ref.cli import main as cli_main
from mpt_ref.interop.adapter import load_peft_adapter
from mpt_ref.serve.prompt_table import prompt_input_ids, prompt_table, trtllm_lookup
from mpt_ref.serve.whole_model import read_word_embeddings
from mpt_ref.testing.assertions import assert_close
from mpt_ref.tolerances import PEFT_F32, SERVE_LOGITS_F32

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

pytestmark = [pytest.mark.peft, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

V, D, N, K = 48, 16, 3, 3
BASES = ("gpt2", "llama")
KINDS = ("prompt_tuning", "mpt", "p_tuning_mlp", "p_tuning_lstm")
SHAPES = [(1, 4), (1, 9), (3, 4), (3, 9)]  # (B, S)
# the base graphs' opsets: GPT-2's needs the prepend graph converted down from opset 21
OPSETS = {"gpt2": 17, "llama": 21}


def _base(name: str):
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=D, n_layer=2, n_head=2)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval()


class _EmbedsToLogits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds, attention_mask):
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False).logits


@pytest.fixture(scope="module", params=BASES)
def base(request, tmp_path_factory):
    """(name, directory with model.safetensors, base.onnx path)."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    model = _base(name)
    model.save_pretrained(root / "hf")
    x, mask = torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_EmbedsToLogits(model), (x, mask), str(root / "base.onnx"), dynamo=False,
                          input_names=["inputs_embeds", "attention_mask"], output_names=["logits"],
                          opset_version=OPSETS[name],
                          dynamic_axes={"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "logits": {0: "batch", 1: "seq"}})
    return name, root / "hf", root / "base.onnx"


def _config(kind: str):
    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": N}
    if kind == "prompt_tuning":
        return peft.PromptTuningConfig(**common)
    if kind == "mpt":
        return peft.MultitaskPromptTuningConfig(num_tasks=K, num_ranks=2, **common)
    encoder = "LSTM" if kind == "p_tuning_lstm" else "MLP"
    return peft.PromptEncoderConfig(encoder_hidden_size=8, encoder_reparameterization_type=encoder, **common)


def _train_and_save(name: str, kind: str, directory) -> None:
    """A few Adam steps on random next-token data, then save_pretrained."""
    torch.manual_seed(1)
    model = peft.get_peft_model(_base(name), _config(kind))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(3):
        ids = torch.randint(0, V, (4, 6))
        kwargs = {"task_ids": torch.tensor([0, 1, 2, step % K])} if kind == "mpt" else {}
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, **kwargs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(directory))


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    """kind -> (adapter dir, reloaded PeftModel, composed model path)."""
    name, hf_dir, base_onnx = base
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(f"{name}_{kind}")
        _train_and_save(name, kind, root / "adapter")
        reloaded = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)), str(root / "adapter")).eval()
        composed = root / "model.onnx"
        rc = cli_main(["export-model", str(root / "adapter"), "--base-onnx", str(base_onnx),
                       "--base-weights", str(hf_dir / "model.safetensors"), "-o", str(composed)])
        assert rc == 0
        out[kind] = (root / "adapter", reloaded, composed)
    return out


def _inputs(B: int, S: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, S))
    mask = np.ones((B, S), dtype=np.int64)
    if B > 1:
        mask[0, :2] = 0  # left padding on one row
    tasks = np.array([2, 0, 1][:B]) if B > 1 else np.array([1])
    return ids, mask, tasks


MAX_ERRORS: dict[tuple[str, str, int, int], tuple[float, float]] = {}  # (max |error|, max |logits|)


@pytest.mark.parametrize("kind", KINDS)
def test_composed_model_logits_equal_peft(base, adapters, kind):
    name = base[0]
    _, reloaded, composed = adapters[kind]
    session = ort.InferenceSession(str(composed), providers=["CPUExecutionProvider"])
    for B, S in SHAPES:
        ids, mask, tasks = _inputs(B, S, seed=B * 100 + S)
        feeds = {"input_ids": ids, "attention_mask": mask}
        kwargs = {}
        if kind == "mpt":
            feeds["task_ids"] = tasks
            kwargs["task_ids"] = torch.tensor(tasks)
        got = session.run(["logits"], feeds)[0]
        with torch.no_grad():
            want = reloaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs).logits.numpy()
        assert got.shape == want.shape == (B, N + S, V)
        scale = float(np.abs(want).max())
        MAX_ERRORS[(name, kind, B, S)] = (float(np.abs(got - want).max()), scale)
        assert_close(f"{name} {kind} B={B} S={S} logits", got, want,
                     SERVE_LOGITS_F32._replace(atol=SERVE_LOGITS_F32.atol * scale))
    if os.environ.get("MPT_REF_PRINT_ERRORS"):
        for key, (err, scale) in sorted(MAX_ERRORS.items()):
            if key[:2] == (name, kind):
                print(f"max |logits error| {key}: {err:.3g} = {err / scale:.3g} s (s = {scale:.3g})")


def test_composed_model_task_ids_select_per_row(base, adapters):
    """MPT: each row of one batch reads its own task (a swap of task ids changes exactly those rows)."""
    _, _, composed = adapters["mpt"]
    session = ort.InferenceSession(str(composed), providers=["CPUExecutionProvider"])
    ids, mask, _ = _inputs(3, 5, seed=7)
    a = session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "task_ids": np.array([0, 1, 2])})[0]
    b = session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "task_ids": np.array([0, 2, 1])})[0]
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[1], b[1]) and not np.allclose(a[2], b[2])
    bad = session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "task_ids": np.array([0, 3, 1])})[0]
    assert np.isnan(bad[1]).all() and np.isfinite(bad[0]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_table_lookup_equals_peft_prepend(base, adapters, kind):
    """TensorRT-LLM's lookup (emulated) over [V..V+N-1] + ids with the saved table equals PEFT's
    concat(get_prompt(B, task_ids), word_embeddings(ids))."""
    name, hf_dir, _ = base
    adapter_dir, reloaded, _ = adapters[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = load_peft_adapter(adapter_dir)
    table = prompt_table(module)  # K,T,D
    assert table.shape == ((K if kind == "mpt" else 1), N, D)
    _, w = read_word_embeddings(hf_dir / "model.safetensors")
    ids, _, tasks = _inputs(3, 6, seed=11)
    if kind != "mpt":
        tasks = np.zeros(3, dtype=np.int64)
    got = trtllm_lookup(prompt_input_ids(ids, V, N), tasks, table.reshape(-1, D), w, task_vocab_size=N)
    with torch.no_grad():
        prompts = reloaded.get_prompt(3, task_ids=torch.tensor(tasks) if kind == "mpt" else None)
        want = torch.cat([prompts, reloaded.word_embeddings(torch.tensor(ids))], dim=1).numpy()
    assert_close(f"{name} {kind} prompt-table lookup", got, want, PEFT_F32)


# --- right or refused, and export-model's own check, on real PEFT adapters ------------------------------

HEAD_MODELS = {"SEQ_CLS": "ForSequenceClassification", "TOKEN_CLS": "ForTokenClassification",
               "QUESTION_ANS": "ForQuestionAnswering"}


@pytest.mark.parametrize("task_type", sorted(HEAD_MODELS))
def test_head_adapters_are_refused_naming_their_head_keys(base, tmp_path, capsys, task_type):
    """Before: a SEQ_CLS adapter exported with exit 0 and logits 3.49 off PeftModel's, its trained
    head (base_model.score.weight) dropped without a word."""
    name, hf_dir, base_onnx = base
    prefix = "GPT2" if name == "gpt2" else "Llama"
    cls = getattr(transformers, prefix + HEAD_MODELS[task_type])
    config = transformers.AutoConfig.from_pretrained(str(hf_dir), num_labels=2, pad_token_id=0)
    torch.manual_seed(0)
    model = peft.get_peft_model(cls(config), peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=N))
    model.save_pretrained(str(tmp_path / "adapter"))
    head_keys = sorted(set(_saved_keys(tmp_path / "adapter")) - {"prompt_embeddings"})
    assert head_keys  # PEFT saved a trained head beside the prompt
    argvs = [["export-model", str(tmp_path / "adapter"), "--base-onnx", str(base_onnx), "--base-weights",
              str(hf_dir / "model.safetensors"), "-o", str(tmp_path / "m.onnx")],
             ["export", str(tmp_path / "adapter"), "--format", "prompt-table", "-o", str(tmp_path / "t")],
             ["export", str(tmp_path / "adapter"), "-o", str(tmp_path / "p.onnx")]]
    for argv in argvs:
        capsys.readouterr()
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert all(k in err for k in head_keys), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def _saved_keys(directory):
    from safetensors.numpy import load_file

    return list(load_file(str(directory / "adapter_model.safetensors")))


def test_a_task_type_null_adapter_is_refused(base, tmp_path, capsys):
    """PEFT's bare PeftModel saves it and ignores the prompt (logits = the base model's); exporting it with the
    prompt prepended was silently wrong."""
    name, hf_dir, base_onnx = base
    base_model = _base(name)
    model = peft.PeftModel(base_model, peft.PromptTuningConfig(num_virtual_tokens=N))
    ids = torch.randint(0, V, (1, 4))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base_model(input_ids=ids).logits)  # the prompt is ignored
    model.save_pretrained(str(tmp_path / "adapter"))
    for argv in (["export-model", str(tmp_path / "adapter"), "--base-onnx", str(base_onnx), "--base-weights",
                  str(hf_dir / "model.safetensors"), "-o", str(tmp_path / "m.onnx")],
                 ["export", str(tmp_path / "adapter"), "--format", "triton", "-o", str(tmp_path / "repo")]):
        capsys.readouterr()
        assert cli_main(argv) == 2
        assert "task_type" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_base_exported_without_dynamic_axes_is_refused_before_writing(base, adapters, tmp_path, capsys):
    """Before: accepted with exit 0, then every call failed in onnxruntime ('Attempting to broadcast
    an axis by a dimension other than 1. 7 by 13')."""
    name, hf_dir, _ = base
    static = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_EmbedsToLogits(_base(name)), (torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.int64)),
                          str(static), dynamo=False, input_names=["inputs_embeds", "attention_mask"],
                          output_names=["logits"], opset_version=OPSETS[name])
    adapter_dir = adapters["prompt_tuning"][0]
    out = tmp_path / "m.onnx"
    rc = cli_main(["export-model", str(adapter_dir), "--base-onnx", str(static), "--base-weights",
                   str(hf_dir / "model.safetensors"), "-o", str(out)])
    assert rc == 2 and "sequence axis" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_export_model_prints_a_passing_check(base, adapters, kind, capsys):
    """export-model ran the composed model itself (adapters fixture): re-run here to read its verdict."""
    name, hf_dir, base_onnx = base
    adapter_dir, _, composed = adapters[kind]
    capsys.readouterr()
    out = composed.parent / "again.onnx"
    assert cli_main(["export-model", str(adapter_dir), "--base-onnx", str(base_onnx), "--base-weights",
                     str(hf_dir / "model.safetensors"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verdict: PASS" in text and "logits vs base graph alone" in text
    if os.environ.get("MPT_REF_PRINT_ERRORS"):
        print(f"\n{name} {kind}\n{text}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_tensor_bytes_load_with_torch_as_vllms_server_loads_them(dtype):
    """vLLM's OpenAI server reads prompt_embeds with torch.load(weights_only=True); mpt-ref writes them without torch."""
    import io

    from mpt_ref.serve.vllm import tensor_bytes

    a = np.random.default_rng(0).normal(size=(5, 7)).astype(dtype)
    t = torch.load(io.BytesIO(tensor_bytes(a)), weights_only=True, map_location="cpu")
    assert t.dtype == torch.from_numpy(a).dtype and tuple(t.shape) == a.shape
    np.testing.assert_array_equal(t.numpy(), a)
