"""Round trips with real PEFT: PEFT -> mpt-ref -> PEFT and mpt-ref -> PEFT -> mpt-ref, exact.

A tiny Llama built from a config (no downloads) hosts the adapters; prompts are compared through
PEFT's own ``get_prompt``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mpt_ref
from mpt_ref.io.checkpoint import read_tensors
from mpt_ref.testing.assertions import assert_close
from mpt_ref.tolerances import PEFT_F32

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.peft, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

D, N, B = 16, 3, 2
TASKS = [0, 2]


def base_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=32)
    return transformers.LlamaForCausalLM(cfg).eval()


CONFIGS = {
    "prompt_tuning": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N),
    "mpt": lambda: peft.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, num_tasks=3, num_ranks=2),
    "p_tuning_mlp": lambda: peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, encoder_hidden_size=8),
    "p_tuning_lstm": lambda: peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, encoder_hidden_size=8,
                                                      encoder_reparameterization_type="LSTM", encoder_num_layers=2),
}


def peft_prompt(model, kind):
    with torch.no_grad():
        if kind == "mpt":
            return model.get_prompt(B, task_ids=torch.tensor(TASKS)).numpy()
        return model.get_prompt(B).numpy()


def our_prompt(module, kind):
    if kind == "mpt":
        return module.get_prompt(B, TASKS)
    if isinstance(module, mpt_ref.PromptEncoder):
        return np.repeat(module.prompt_table()[None], B, axis=0)
    return module.get_prompt(B)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_peft_to_mpt_ref_to_peft(tmp_path, kind, safe):
    model = peft.get_peft_model(base_model(), CONFIGS[kind]())
    model.eval()
    model.save_pretrained(str(tmp_path / "peft"), safe_serialization=safe)
    want = peft_prompt(model, kind)
    if kind.startswith("p_tuning"):  # the adapter holds the encoder output PEFT computed when saving
        table = read_tensors(next((tmp_path / "peft").glob("adapter_model.*")))["prompt_embeddings"]
        assert_close("live encoder vs saved table", want[0], table, PEFT_F32)  # PEFT vs itself: LSTM kernels
        want = np.repeat(table[None], B, axis=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = mpt_ref.load_peft_adapter(tmp_path / "peft")
    saved = {k: v.detach().numpy() for k, v in model.prompt_encoder["default"].state_dict().items()}
    if kind == "mpt":  # the parameters are exact; the float32 product C_t R_t may differ in the last bit
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(v, saved[k])
        assert_close("prompt", our_prompt(ours, kind), want, PEFT_F32)
    else:  # a table lookup: exact
        np.testing.assert_array_equal(our_prompt(ours, kind), want)

    ours.save_pretrained(tmp_path / "ours")
    back = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "ours"))
    np.testing.assert_array_equal(peft_prompt(back, kind), want)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_mpt_ref_to_peft_to_mpt_ref(tmp_path, kind):
    cfg = mpt_ref.config_from_dict({k: v for k, v in CONFIGS[kind]().to_dict().items() if k != "runtime_config"}
                                   | {"token_dim": D})
    cls = {"prompt_tuning": mpt_ref.PromptEmbedding, "mpt": mpt_ref.MultitaskPromptEmbedding}.get(kind)
    ours = cls(cfg, seed=3) if cls else mpt_ref.PromptEncoder(cfg, seed=3).eval()
    ours.save_pretrained(tmp_path / "ours")
    model = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "ours"))
    assert_close("prompt", peft_prompt(model, kind), our_prompt(ours, kind), PEFT_F32)  # exact but for MPT's product
    model.save_pretrained(str(tmp_path / "peft"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = mpt_ref.load_peft_adapter(tmp_path / "peft")
    np.testing.assert_array_equal(our_prompt(back, kind), our_prompt(ours, kind))
    if kind == "mpt":
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(back.state_dict()[k], v)


def test_mpt_source_init_from_a_torch_bin_matches_peft(tmp_path):
    """PEFT's own test saves the source as adapter_model.bin; we read it without torch."""
    src = peft.get_peft_model(base_model(), CONFIGS["mpt"]())
    src.save_pretrained(str(tmp_path / "src"), safe_serialization=False)
    path = str(tmp_path / "src" / "adapter_model.bin")
    for init in ("AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK", "ONLY_SOURCE_SHARED"):
        kw = dict(task_type="CAUSAL_LM", num_virtual_tokens=N, num_tasks=1, num_ranks=2, prompt_tuning_init=init,
                  prompt_tuning_init_state_dict_path=path, prompt_tuning_init_task=1)
        model = peft.get_peft_model(base_model(), peft.MultitaskPromptTuningConfig(**kw))
        ours = mpt_ref.MultitaskPromptEmbedding(mpt_ref.MultitaskPromptTuningConfig(**kw, token_dim=D), seed=0)
        theirs = {k: v.detach().numpy()
                  for k, v in model.prompt_encoder["default"].state_dict().items()}
        keys = ["embedding.weight"] if init == "ONLY_SOURCE_SHARED" else list(ours.state_dict())
        for k in keys:
            np.testing.assert_array_equal(ours.state_dict()[k], theirs[k], err_msg=f"{init} {k}")
