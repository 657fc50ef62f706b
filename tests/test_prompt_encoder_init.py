"""PromptEncoder init distributions and PEFT's warnings and construction errors."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from encoder_helpers import (
    MLP_WARNING,
)

import mpt_ref
from mpt_ref.modules.config import PromptEncoderReparameterizationType as EncoderType

# -- init ------------------------------------------------------------------------------------------


def test_init_is_seeded_and_float32_is_rounded_float64():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=4, token_dim=3, encoder_hidden_size=2,
                                      encoder_reparameterization_type="LSTM", encoder_num_layers=2)
    a = mpt_ref.PromptEncoder(cfg, seed=5, dtype=np.float64).state_dict()
    b = mpt_ref.PromptEncoder(cfg, seed=5, dtype=np.float32).state_dict()
    c = mpt_ref.PromptEncoder(cfg, seed=6, dtype=np.float64).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k].astype(np.float32), b[k])
        assert not np.array_equal(a[k], c[k])


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_init_distributions(kind):
    D, H = 40, 25
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=50, token_dim=D, encoder_hidden_size=H,
                                      encoder_reparameterization_type=kind)
    params = mpt_ref.PromptEncoder(cfg, seed=0, dtype=np.float64).state_dict()
    E = params.pop("embedding.weight")  # N(0, 1): 2000 draws
    assert abs(E.mean()) < 0.12 and 0.9 < E.std() < 1.1
    for key, value in params.items():
        if key.startswith("lstm_head."):
            bound = 1 / np.sqrt(H)
        else:  # mlp_head.{j}.weight is (out, in); the bias shares the weight's fan_in
            bound = 1 / np.sqrt(params[key.rsplit(".", 1)[0] + ".weight"].shape[1])
        assert np.abs(value).max() <= bound, key
        assert np.abs(value).max() > 0.8 * bound, key  # uniform over the whole interval
        assert abs(value.mean()) < 0.2 * bound, key


# -- warnings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [EncoderType.MLP, "MLP"])
def test_mlp_warns_with_peft_text_when_num_layers_is_not_2(kind):
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_reparameterization_type=kind,
                                      encoder_num_layers=3)
    with pytest.warns(UserWarning, match=f"^{re.escape(MLP_WARNING)}$"):
        mpt_ref.PromptEncoder(cfg)
    cfg.encoder_reparameterization_type = "MLP"  # a plain str set after construction (PEFT: AttributeError, Q1)
    with pytest.warns(UserWarning, match=f"^{re.escape(MLP_WARNING)}$"):
        mpt_ref.PromptEncoder(cfg)


def test_no_warning_for_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in ("MLP", "LSTM"):
            mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2,
                                                             encoder_reparameterization_type=kind, encoder_dropout=0.1))


def test_lstm_one_layer_dropout_warns_like_torch():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_reparameterization_type="LSTM",
                                      encoder_num_layers=1, encoder_dropout=0.25)
    text = ("dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            "num_layers greater than 1, but got dropout=0.25 and num_layers=1")
    with pytest.warns(UserWarning, match=f"^{re.escape(text)}$"):
        module = mpt_ref.PromptEncoder(cfg)
    assert module.sample_dropout_masks(2) == []  # and no dropout happens


# -- construction errors (PEFT's texts) ------------------------------------------------------------


def test_unknown_encoder_type_gives_peft_error():
    peft_text = "Prompt encoder type not recognized. Please use one of MLP (recommended) or LSTM"
    with pytest.raises(mpt_ref.ConfigError, match=re.escape(peft_text)):
        mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_reparameterization_type="GRU")
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2)
    cfg.encoder_reparameterization_type = "mlp"  # mutated after validation
    with pytest.raises(ValueError, match=re.escape(peft_text) + ".*'mlp'"):
        mpt_ref.PromptEncoder(cfg)


@pytest.mark.parametrize(
    "config, dtype, exc, match",
    [
        # (missing token_dim and an integer dtype are cases of the error contract, test_error_contract.py)
        (mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=2), np.float32, mpt_ref.ConfigError,
         "PromptEncoderConfig, got PromptTuningConfig"),
    ],
)
def test_bad_construction_raises(config, dtype, exc, match):
    with pytest.raises(exc, match=match):
        mpt_ref.PromptEncoder(config, dtype=dtype)
