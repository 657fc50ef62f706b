"""Cross-check PromptEmbedding / MultitaskPromptEmbedding and their configs against real PEFT.

Skipped without torch and peft; CI installs them (the ``peft`` extra). PEFT's modules run in float64
with our parameters loaded, and torch autograd supplies the reference gradients.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from safetensors.numpy import save_file

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close, assert_grads_close

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from peft.tuners.multitask_prompt_tuning.model import (
    MultitaskPromptEmbedding as PeftMPT,  # noqa: E402
)
from peft.tuners.prompt_tuning.model import PromptEmbedding as PeftPT  # noqa: E402

pytestmark = pytest.mark.peft


def peft_config(config):
    """The same config as a PEFT object, built from our adapter_config.json dict."""
    d = {k: v for k, v in config.to_dict().items() if v is not None}
    return peft.PeftConfig.from_peft_type(**d) if hasattr(peft.PeftConfig, "from_peft_type") else \
        peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[d["peft_type"]](**d)


def peft_grads(module, out, dout, names):
    module.zero_grad()
    (out * torch.from_numpy(dout)).sum().backward()
    params = dict(module.named_parameters())
    return {k: params[k].grad.numpy() for k in names}


def load_into_peft(peft_module, state):
    peft_module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return peft_module


@settings(max_examples=25)
@given(hs.mpt_cases())
def test_mpt_forward_and_gradients_match_peft_float64(case):
    ref = mpt_ref.MultitaskPromptEmbedding(case.config, dtype=np.float64)
    ref.load_state_dict(case.params)
    D = case.config.token_dim
    theirs = load_into_peft(PeftMPT(peft_config(case.config), torch.nn.Embedding(3, D)).double(), case.params)
    idx, tasks = case.inputs["indices"], case.inputs["task_ids"]
    out = theirs(torch.from_numpy(idx), torch.from_numpy(tasks))
    assert_close("out", ref.forward(idx, tasks), out.detach().numpy(), tol.PEFT_F64)
    assert list(theirs.state_dict()) == list(ref.state_dict())
    want = peft_grads(theirs, out, case.dout, list(ref.state_dict()))
    assert_grads_close("grads", ref.backward(case.dout, idx, tasks), want, tol.PEFT_F64)


@settings(max_examples=10)
@given(hs.mpt_cases(dtype=np.float32))
def test_mpt_float32_matches_peft_native_dtype(case):
    ref = mpt_ref.MultitaskPromptEmbedding(case.config, dtype=np.float32)
    ref.load_state_dict(case.params)
    theirs = load_into_peft(PeftMPT(peft_config(case.config), torch.nn.Embedding(3, case.config.token_dim)), case.params)
    out = theirs(torch.from_numpy(case.inputs["indices"]), torch.from_numpy(case.inputs["task_ids"]))
    assert_close("out", ref.forward(**case.inputs), out.detach().numpy(), tol.PEFT_F32)


@settings(max_examples=15)
@given(hs.prompt_embedding_cases())
def test_prompt_embedding_matches_peft_float64(case):
    ref = mpt_ref.PromptEmbedding(case.config, dtype=np.float64)
    ref.load_state_dict(case.params)
    theirs = load_into_peft(PeftPT(peft_config(case.config), torch.nn.Embedding(3, case.config.token_dim)).double(),
                            case.params)
    idx = case.inputs["indices"]
    out = theirs(torch.from_numpy(idx))
    np.testing.assert_array_equal(ref.forward(idx), out.detach().numpy())
    assert_grads_close("grads", ref.backward(case.dout, idx), peft_grads(theirs, out, case.dout, ["embedding.weight"]),
                       tol.PEFT_F64)


def test_peft_rejects_what_we_reject_for_task_ids():
    """Error contract parity: PEFT raises for None, negative and >= K task ids (torch index_select)."""
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=2, token_dim=2, num_tasks=2)
    theirs = PeftMPT(peft_config(cfg), torch.nn.Embedding(3, 2))
    idx = torch.zeros((1, 2), dtype=torch.long)
    with pytest.raises(ValueError, match="task_ids cannot be None"):
        theirs(idx, None)
    for bad in ([-1], [2]):
        with pytest.raises((IndexError, RuntimeError)):
            theirs(idx, torch.tensor(bad))
        with pytest.raises(mpt_ref.IndexRangeError):
            mpt_ref.MultitaskPromptEmbedding(cfg).forward(idx.numpy(), bad)


# -- init strategies against PEFT's own init from the same file ------------------------------------

T, D, R = 5, 4, 3


@pytest.fixture
def source_file(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "adapter_model.safetensors"
    save_file({
        "prompt_embeddings": rng.standard_normal((T, D)).astype(np.float32),
        "prefix_task_cols": rng.standard_normal((3, T, R)).astype(np.float32),
        "prefix_task_rows": rng.standard_normal((3, R, D)).astype(np.float32),
    }, str(path))
    return str(path)


@pytest.mark.parametrize("init, kw", [("AVERAGE_SOURCE_TASKS", {}), ("EXACT_SOURCE_TASK", {"prompt_tuning_init_task": 1}),
                                      ("ONLY_SOURCE_SHARED", {"num_tasks": 4})])
def test_source_inits_match_peft(source_file, init, kw):
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=T, token_dim=D, num_ranks=R, prompt_tuning_init=init,
                                              prompt_tuning_init_state_dict_path=source_file, **kw)
    ours = mpt_ref.MultitaskPromptEmbedding(cfg, seed=0).state_dict()
    theirs = {k: v.detach().numpy() for k, v in PeftMPT(peft_config(cfg), torch.nn.Embedding(3, D)).state_dict().items()}
    loaded = ["embedding.weight"] if init == "ONLY_SOURCE_SHARED" else list(ours)
    for k in loaded:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=f"{init} {k}")  # bit for bit


def test_average_init_with_more_target_tasks_fails_in_peft_too(source_file):
    """Our ConfigError is PEFT's RuntimeError size mismatch, explained."""
    kw = dict(num_virtual_tokens=T, token_dim=D, num_ranks=R, prompt_tuning_init="AVERAGE_SOURCE_TASKS",
              prompt_tuning_init_state_dict_path=source_file)
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftMPT(peft.MultitaskPromptTuningConfig(**kw, num_tasks=2, num_transformer_submodules=1), torch.nn.Embedding(3, D))
    with pytest.raises(mpt_ref.ConfigError, match="num_tasks must be 1"):
        mpt_ref.MultitaskPromptTuningConfig(**kw, num_tasks=2)


def test_text_init_matches_peft_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(tmp_path))
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=5, token_dim=3, prompt_tuning_init="TEXT",
                                      prompt_tuning_init_text="c a b", tokenizer_name_or_path=str(tmp_path))
    vocab = torch.nn.Embedding(4, 3)
    theirs = PeftPT(peft_config(cfg), vocab).state_dict()["embedding.weight"].numpy()
    ours = mpt_ref.PromptEmbedding(cfg, vocab.weight.detach().numpy()).state_dict()["embedding.weight"]
    np.testing.assert_array_equal(ours, theirs)


# -- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name", ["PromptTuningConfig", "MultitaskPromptTuningConfig", "PromptEncoderConfig"])
def test_config_defaults_equal_peft(cls_name):
    ours = getattr(mpt_ref, cls_name)(num_virtual_tokens=3, task_type="CAUSAL_LM").to_dict()
    theirs = getattr(peft, cls_name)(num_virtual_tokens=3, task_type="CAUSAL_LM").to_dict()
    theirs = {k: getattr(v, "value", v) for k, v in theirs.items() if k != "runtime_config"}
    theirs["num_transformer_submodules"] = 1  # PEFT fills this when attaching to a model; we at construction
    ours.pop("peft_version"), theirs.pop("peft_version")
    assert ours == theirs


def test_adapter_config_json_loads_both_ways(tmp_path):
    ours = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=8, num_tasks=4, num_ranks=2,
                                               task_type="SEQ_2_SEQ_LM")
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftConfig.from_pretrained(str(tmp_path / "ours"))
    assert type(theirs).__name__ == "MultitaskPromptTuningConfig"
    assert (theirs.num_tasks, theirs.num_ranks, theirs.num_transformer_submodules) == (4, 2, 2)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    back = mpt_ref.load_config(tmp_path / "theirs")
    on_disk = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert back.to_dict() == {**on_disk, "peft_version": on_disk["peft_version"]}
