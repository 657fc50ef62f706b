"""PEFT itself, treated as a port, passes ``assert_conforms`` (forward and autograd gradients).

This is the README's usage example run for real: an independent implementation (PyTorch) checked by
the oracle without any of its own test code.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpt_ref.testing.conformance import assert_conforms

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from peft.tuners.multitask_prompt_tuning.model import MultitaskPromptEmbedding  # noqa: E402
from peft.tuners.p_tuning.model import PromptEncoder  # noqa: E402

pytestmark = pytest.mark.peft


def peft_mpt(params, config):
    """PEFT's module built from the config assert_conforms hands over (T = num_virtual_tokens · S)."""
    cfg = peft.MultitaskPromptTuningConfig(num_virtual_tokens=config.total_virtual_tokens, token_dim=config.token_dim,
                                           num_tasks=config.num_tasks, num_ranks=config.num_ranks,
                                           num_transformer_submodules=1)
    module = MultitaskPromptEmbedding(cfg, torch.nn.Embedding(1, 1)).double()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    return module


def mpt_forward(params, indices, task_ids, config):
    with torch.no_grad():
        return peft_mpt(params, config)(torch.from_numpy(indices), torch.from_numpy(task_ids)).numpy()


def mpt_backward(params, dout, indices, task_ids, config):
    module = peft_mpt(params, config)
    module(torch.from_numpy(indices), torch.from_numpy(task_ids)).backward(torch.from_numpy(dout))
    return {k: p.grad.numpy() for k, p in module.named_parameters()}


def encoder_forward(params, indices, dropout_masks, config):
    lstm = config.encoder_reparameterization_type == "LSTM"
    cfg = peft.PromptEncoderConfig(num_virtual_tokens=config.total_virtual_tokens, token_dim=config.token_dim,
                                   encoder_hidden_size=config.encoder_hidden_size or config.token_dim,
                                   num_transformer_submodules=1,
                                   encoder_num_layers=config.encoder_num_layers if lstm else 2,
                                   encoder_reparameterization_type="LSTM" if lstm else "MLP")
    module = PromptEncoder(cfg).double().eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    with torch.no_grad():
        return module(torch.from_numpy(indices)).numpy()


def test_peft_mpt_conforms():
    assert_conforms(mpt_forward, backward=mpt_backward, module="mpt", max_examples=30)


@pytest.mark.parametrize("module", ["mlp_encoder", "lstm_encoder"])
def test_peft_prompt_encoder_conforms(module):
    assert_conforms(encoder_forward, module=module, max_examples=20, dropout=False)  # torch draws its own masks


def test_peft_float32_mpt_conforms_at_the_float32_tolerance():
    def forward32(params, indices, task_ids, config):
        module = peft_mpt(params, config).float()
        with torch.no_grad():
            return module(torch.from_numpy(indices), torch.from_numpy(task_ids)).numpy()

    assert_conforms(forward32, module="mpt", dtype=np.float32, max_examples=30)


def test_a_peft_encoder_left_in_train_mode_is_caught():
    """The port built from the whole config (encoder_dropout included) that forgets ``.eval()``: torch's
    nn.LSTM(dropout=p) drops between layers in what are eval calls. The eval cases with
    encoder_dropout > 0 and L >= 2 catch it (before they existed, this port passed)."""
    def forgetful_forward(params, indices, dropout_masks, config):
        cfg = peft.PromptEncoderConfig(num_virtual_tokens=config.total_virtual_tokens, token_dim=config.token_dim,
                                       encoder_hidden_size=config.encoder_hidden_size or config.token_dim,
                                       num_transformer_submodules=1, encoder_num_layers=config.encoder_num_layers,
                                       encoder_dropout=config.encoder_dropout, encoder_reparameterization_type="LSTM")
        module = PromptEncoder(cfg).double()  # no .eval()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
        with torch.no_grad():
            return module(torch.from_numpy(indices)).numpy()

    with pytest.raises(AssertionError, match=r"'encoder_num_layers': [23], 'encoder_dropout': 0\.[15]"):
        assert_conforms(forgetful_forward, module="lstm_encoder", max_examples=20, dropout=False, shrink=False)
