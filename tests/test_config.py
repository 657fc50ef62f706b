"""Configs: PEFT's fields and defaults, adapter_config.json round trips, stricter validation."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpt_ref
from mpt_ref.modules.config import PromptEncoderConfig
from mpt_ref.testing import strategies as hs

# PEFT's on-disk key sets (observed from real saves of PEFT 0.21).
PT_KEYS = {
    "auto_mapping", "base_model_name_or_path", "inference_mode", "modules_to_save", "num_attention_heads",
    "num_layers", "num_transformer_submodules", "num_virtual_tokens", "peft_type", "peft_version",
    "prompt_tuning_init", "prompt_tuning_init_text", "revision", "task_type", "token_dim", "tokenizer_kwargs",
    "tokenizer_name_or_path",
}
MPT_KEYS = PT_KEYS | {"num_ranks", "num_tasks", "prompt_tuning_init_state_dict_path", "prompt_tuning_init_task"}
P_TUNING_KEYS = (PT_KEYS - {"prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_kwargs",
                            "tokenizer_name_or_path"}) | {"encoder_dropout", "encoder_hidden_size",
                                                         "encoder_num_layers", "encoder_reparameterization_type"}


@pytest.mark.parametrize(
    "cls, keys",
    [(mpt_ref.PromptTuningConfig, PT_KEYS), (mpt_ref.MultitaskPromptTuningConfig, MPT_KEYS),
     (PromptEncoderConfig, P_TUNING_KEYS)],
)
def test_key_sets_match_peft(cls, keys):
    assert set(cls(num_virtual_tokens=2).to_dict()) == keys


def test_defaults_and_enum_strings():
    d = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=4).to_dict()
    assert d["peft_type"] == "MULTITASK_PROMPT_TUNING" and type(d["peft_type"]) is str
    assert (d["prompt_tuning_init"], d["num_ranks"], d["num_tasks"], d["prompt_tuning_init_task"]) == ("RANDOM", 1, 1, 0)
    assert d["inference_mode"] is False and d["num_transformer_submodules"] == 1
    e = PromptEncoderConfig(num_virtual_tokens=4).to_dict()
    assert (e["encoder_reparameterization_type"], e["encoder_num_layers"], e["encoder_dropout"]) == ("MLP", 2, 0.0)
    assert e["encoder_hidden_size"] is None


def test_seq2seq_defaults_to_two_submodules():
    assert mpt_ref.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3).total_virtual_tokens == 6
    assert mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3).total_virtual_tokens == 3


@given(st.one_of(hs.mpt_configs(), hs.prompt_tuning_configs()), st.booleans())
def test_json_round_trip(tmp_path_factory, config, inference_mode):
    config.inference_mode = inference_mode
    path = tmp_path_factory.mktemp("cfg")
    written = config.save_pretrained(path)
    text = written.read_text()
    assert not text.endswith("\n") and json.loads(text) == json.loads(json.dumps(json.loads(text), sort_keys=True))
    loaded = mpt_ref.load_config(path)
    assert type(loaded) is type(config)
    assert loaded.to_dict() == {**config.to_dict(), "inference_mode": True}  # PEFT writes true on disk


def test_unknown_keys_are_warned_and_dropped():
    d = {**mpt_ref.PromptTuningConfig(num_virtual_tokens=2).to_dict(), "from_the_future": 1}
    with pytest.warns(UserWarning, match="from_the_future"):
        cfg = mpt_ref.config_from_dict(d)
    assert "from_the_future" not in cfg.to_dict()


def test_runtime_config_dropped_with_warning(tmp_path):
    d = {**mpt_ref.PromptTuningConfig(num_virtual_tokens=2).to_dict(), "runtime_config": {}}
    (tmp_path / "adapter_config.json").write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="runtime_config"):
        mpt_ref.load_config(tmp_path)


def test_save_refuses_to_overwrite(tmp_path):
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=2)
    cfg.save_pretrained(tmp_path)
    with pytest.raises(mpt_ref.OutputExistsError):
        cfg.save_pretrained(tmp_path)
    cfg.save_pretrained(tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter_config.json"]  # no temp files left


BAD = [
    (mpt_ref.PromptTuningConfig, dict(prompt_tuning_init="TEXTT"), r"prompt_tuning_init: expected one of"),
    (mpt_ref.PromptTuningConfig, dict(prompt_tuning_init="AVERAGE_SOURCE_TASKS"), "expected one of"),
    (mpt_ref.PromptTuningConfig, dict(task_type="LM"), "task_type"),
    (mpt_ref.PromptTuningConfig, dict(num_virtual_tokens=0), "num_virtual_tokens: expected an integer >= 1, got 0"),
    (mpt_ref.PromptTuningConfig, dict(token_dim=-3), "token_dim"),
    (mpt_ref.PromptTuningConfig, dict(token_dim=2.0), "token_dim"),
    (mpt_ref.PromptTuningConfig, dict(num_virtual_tokens=True), "num_virtual_tokens"),
    (mpt_ref.PromptTuningConfig, dict(prompt_tuning_init="TEXT", prompt_tuning_init_text="x"), "tokenizer_name_or_path"),
    (mpt_ref.PromptTuningConfig, dict(prompt_tuning_init="TEXT", tokenizer_name_or_path="t"), "prompt_tuning_init_text"),
    (mpt_ref.PromptTuningConfig, dict(tokenizer_kwargs={"a": 1}), "tokenizer_kwargs only valid"),
    (mpt_ref.MultitaskPromptTuningConfig, dict(num_tasks=0), "num_tasks"),
    (mpt_ref.MultitaskPromptTuningConfig, dict(num_ranks=0), "num_ranks"),
    (mpt_ref.MultitaskPromptTuningConfig, dict(prompt_tuning_init_task=-1), "prompt_tuning_init_task"),
    (mpt_ref.MultitaskPromptTuningConfig, dict(prompt_tuning_init="EXACT_SOURCE_TASK"),
     "prompt_tuning_init_state_dict_path needs to be specified"),
    (mpt_ref.MultitaskPromptTuningConfig,
     dict(prompt_tuning_init="AVERAGE_SOURCE_TASKS", prompt_tuning_init_state_dict_path="s.safetensors", num_tasks=3),
     "num_tasks must be 1, got 3"),
    (PromptEncoderConfig, dict(encoder_reparameterization_type="mlp"), "Prompt encoder type not recognized"),
    (PromptEncoderConfig, dict(encoder_dropout=1.0), "encoder_dropout"),
    (PromptEncoderConfig, dict(encoder_num_layers=0), "encoder_num_layers"),
]


@pytest.mark.parametrize("cls, kwargs, match", BAD)
def test_invalid_fields_raise_config_error(cls, kwargs, match):
    with pytest.raises(mpt_ref.ConfigError, match=match):
        cls(**{"num_virtual_tokens": 2, **kwargs})


def test_peft_type_mismatch_and_missing_file(tmp_path):
    with pytest.raises(mpt_ref.ConfigError, match="peft_type"):
        mpt_ref.PromptTuningConfig.from_dict({"peft_type": "P_TUNING"})
    with pytest.raises(mpt_ref.ConfigError, match="missing path"):
        mpt_ref.load_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(mpt_ref.ConfigError, match="expected JSON"):
        mpt_ref.load_config(tmp_path)


def test_mpt_accepts_sample_vocab_string_like_peft():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="SAMPLE_VOCAB")
    assert cfg.to_dict()["prompt_tuning_init"] == "SAMPLE_VOCAB"


@given(hs.encoder_configs())
def test_parameter_shapes_are_the_built_modules_without_building_one(config):
    """parameter_shapes(config) is what the caps and the shape checks before building rely on: it must be
    exactly the module's own state_dict keys, order and shapes."""
    import dataclasses

    from mpt_ref.modules.config import parameter_shapes

    full = mpt_ref.PromptEncoder(dataclasses.replace(config, inference_mode=False), seed=0)
    assert list(parameter_shapes(config, full_encoder=True).items()) == list(full.parameter_shapes().items())
    table = mpt_ref.PromptEncoder(dataclasses.replace(config, inference_mode=True), seed=0)
    assert parameter_shapes(config, full_encoder=False) == table.parameter_shapes()


@given(hs.prompt_tuning_configs(), hs.mpt_configs())
def test_parameter_shapes_of_prompt_and_multitask_modules(pt, mpt):
    from mpt_ref.modules.config import parameter_shapes

    assert parameter_shapes(pt) == mpt_ref.PromptEmbedding(pt).parameter_shapes()
    assert list(parameter_shapes(mpt).items()) == list(mpt_ref.MultitaskPromptEmbedding(mpt).parameter_shapes().items())
