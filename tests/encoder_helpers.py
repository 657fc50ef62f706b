"""Shared by the PromptEncoder test files: module construction from a drawn case, and small fixtures."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import mpt_ref
from mpt_ref.core.lstm_stack import lstm_stack_forward
from mpt_ref.modules.config import PromptEncoderReparameterizationType as EncoderType
from mpt_ref.testing import strategies as hs

MLP_WARNING = "for MLP, the argument `encoder_num_layers` is ignored. Exactly 2 MLP layers are used."
KINK_MARGIN = 1e-4  # ReLU inputs closer than this to 0 make central differences (h=1e-6) meaningless


def module_for(case, dtype=np.float64) -> mpt_ref.PromptEncoder:
    module = mpt_ref.PromptEncoder(case.config, dtype=dtype)
    module.load_state_dict({k: v.astype(dtype) for k, v in case.params.items()})
    return module


def encoder_cases(**kw):
    return st.one_of(hs.mlp_encoder_cases(**kw), hs.lstm_encoder_cases(**kw))


def head_relu_inputs(module, indices, masks=None):
    """The pre-activations of every ReLU in the head (to keep gradcheck away from the kinks)."""
    return relu_inputs(module.state_dict(), indices, encoder_type=module.encoder_type,
                       num_layers=module.num_layers, dropout=module.dropout, masks=masks)


def relu_inputs(params, indices, *, encoder_type, num_layers=0, dropout=0.0, masks=None):
    """The same from the functional core's arguments (params with PEFT keys)."""
    x = params["embedding.weight"][indices]
    if encoder_type == EncoderType.LSTM:
        scales = None if masks is None else [m / (1 - dropout) for m in masks]
        x, _ = lstm_stack_forward(params, x, num_layers=num_layers, dropout_scales=scales)
    pre = []
    for j in range(2 if encoder_type == EncoderType.MLP else 1):
        x = x @ params[f"mlp_head.{2 * j}.weight"].T + params[f"mlp_head.{2 * j}.bias"]
        pre.append(x.ravel())
        x = np.maximum(x, 0)
    return np.concatenate(pre)


LSTM_DROPOUT = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_hidden_size=1,
                                           encoder_reparameterization_type="LSTM", encoder_num_layers=3,
                                           encoder_dropout=0.5)
IDX = np.array([[0, 1]])
