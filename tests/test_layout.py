"""The layered layout keeps the 0.1 import paths working, and one Kind names every module kind."""

from __future__ import annotations

import importlib

import pytest

import mpt_ref
from mpt_ref.errors import ConfigError
from mpt_ref.kind import Kind

MOVED = {  # 0.1 path -> where the module lives now
    "mpt_ref.mpt": "mpt_ref.core.mpt", "mpt_ref.embedding": "mpt_ref.core.embedding",
    "mpt_ref.lstm": "mpt_ref.core.lstm", "mpt_ref.lstm_stack": "mpt_ref.core.lstm_stack",
    "mpt_ref.mlp_head": "mpt_ref.core.mlp_head", "mpt_ref.linear": "mpt_ref.core.linear",
    "mpt_ref.config": "mpt_ref.modules.config", "mpt_ref.multitask": "mpt_ref.modules.multitask",
    "mpt_ref.prompt_encoder": "mpt_ref.modules.prompt_encoder", "mpt_ref.adapter": "mpt_ref.interop.adapter",
    "mpt_ref.checkpoint": "mpt_ref.io.checkpoint",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_import_paths_are_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_from_imports_and_public_api():
    from mpt_ref.mpt import mpt_backward, mpt_forward  # the README of 0.1
    from mpt_ref.testing.conformance import assert_conforms

    assert mpt_forward.__module__ == "mpt_ref.core.mpt" and callable(mpt_backward) and callable(assert_conforms)
    for name in ("MultitaskPromptEmbedding", "PromptEmbedding", "PromptEncoder", "load_peft_adapter", "MptRefError"):
        assert hasattr(mpt_ref, name)


@pytest.mark.parametrize("text, kind", [("mpt", Kind.MPT), ("prompt_embedding", Kind.PROMPT_EMBEDDING),
                                        ("embedding", Kind.PROMPT_EMBEDDING), ("prompt-tuning", Kind.PROMPT_EMBEDDING),
                                        ("mlp", Kind.MLP_ENCODER), ("MLP_ENCODER", Kind.MLP_ENCODER),
                                        ("lstm", Kind.LSTM_ENCODER), ("lstm_encoder", Kind.LSTM_ENCODER)])
def test_kind_parses_its_values_and_the_old_spellings(text, kind):
    assert Kind.parse(text) is kind


def test_kind_of_modules_and_unknown_names():
    enc = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2,
                                                            encoder_reparameterization_type="LSTM"))
    table = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, inference_mode=True))
    assert Kind.of(enc) is Kind.LSTM_ENCODER and Kind.of(table) is Kind.PROMPT_EMBEDDING
    with pytest.raises(ConfigError, match="kind: expected one of .*got 'gru'"):
        Kind.parse("gru")
