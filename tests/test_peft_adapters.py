"""Every adapter type mpt-ref saves is applied by PEFT: ``PeftModel.from_pretrained`` on a tiny base model
built from a config (no downloads) gives logits that differ from the base model's and equal PEFT's own
``get_prompt`` path (prompt prepended to the input embeddings, mask extended), and that prompt is ours.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mpt_ref
from mpt_ref.testing.assertions import assert_close
from mpt_ref.tolerances import PEFT_F32

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.peft, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

D, N = 16, 3
IDS = [[5, 6, 7, 8], [9, 10, 11, 12]]
TASKS = [2, 0]
LOGITS_MOVED = 1e-4  # smallest max |logit change| accepted as "the prompt is applied" (seen: ~1e-1)


def base_model(task_type):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=32, pad_token_id=0, num_labels=3)
    cls = transformers.LlamaForCausalLM if task_type == "CAUSAL_LM" else transformers.LlamaModel
    return cls(cfg).eval()


def _out(result):
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def _mpt():
    cfg = mpt_ref.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, token_dim=D, num_tasks=3,
                                              num_ranks=2)
    m = mpt_ref.MultitaskPromptEmbedding(cfg, seed=1)
    # a fresh MPT prompt is ~4e-4 (PEFT's init): scale the shared table so the logits visibly move
    m.load_state_dict({**m.state_dict(), "embedding.weight": m.state_dict()["embedding.weight"] * 1e3})
    return m


ADAPTERS = {
    "prompt_tuning": lambda: mpt_ref.PromptEmbedding(
        mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, token_dim=D), seed=1),
    "prompt_tuning_feature_extraction": lambda: mpt_ref.PromptEmbedding(
        mpt_ref.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=N, token_dim=D), seed=1),
    "mpt": _mpt,
    "p_tuning_mlp": lambda: mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N, token_dim=D, encoder_hidden_size=8), seed=1).eval(),
    "p_tuning_lstm": lambda: mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N, token_dim=D, encoder_hidden_size=8,
        encoder_reparameterization_type="LSTM", encoder_num_layers=2), seed=1).eval(),
}


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_peft_applies_every_adapter_mpt_ref_saves(tmp_path, kind):
    ours = ADAPTERS[kind]()
    task_type = ours.config.task_type.value
    ours.save_pretrained(tmp_path / "adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(base_model(task_type), str(tmp_path / "adapter")).eval()
    expected_cls = peft.PeftModelForCausalLM if task_type == "CAUSAL_LM" else peft.PeftModelForFeatureExtraction
    assert type(model) is expected_cls  # task_type None would give a plain PeftModel, which drops the prompt

    ids = torch.tensor(IDS)
    mask = torch.ones_like(ids)
    B = ids.shape[0]
    extra = {"task_ids": torch.tensor(TASKS)} if kind == "mpt" else {}
    with torch.no_grad():
        got = _out(model(input_ids=ids, attention_mask=mask, **extra))
        base = _out(base_model(task_type)(input_ids=ids, attention_mask=mask))
        prompts = model.get_prompt(B, **extra)
        T = prompts.shape[1]
        embeds = torch.cat([prompts, model.get_input_embeddings()(ids)], dim=1)
        full_mask = torch.cat([torch.ones(B, T, dtype=mask.dtype), mask], dim=1)
        by_hand = _out(model.get_base_model()(inputs_embeds=embeds, attention_mask=full_mask))
    applied = got[:, T:]  # the outputs include the T prompt positions
    assert applied.shape == base.shape
    assert float((applied - base).abs().max()) > LOGITS_MOVED, "PEFT's logits equal the base model's: prompt ignored"
    np.testing.assert_array_equal(got.numpy(), by_hand.numpy())

    if kind == "mpt":
        want = ours.get_prompt(B, TASKS)
    elif isinstance(ours, mpt_ref.PromptEncoder):
        want = np.repeat(ours.prompt_table()[None], B, axis=0)  # PEFT loads P-tuning as the saved table
    else:
        want = ours.get_prompt(B)
    assert_close("PEFT's prompt vs mpt-ref's", prompts.numpy(), want, PEFT_F32)
