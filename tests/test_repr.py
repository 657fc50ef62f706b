"""Modules print what they are: the config summary, dtype, seed, mode, and each parameter's shape."""

import numpy as np

import mpt_ref


def test_repr_names_config_dtype_and_shapes():
    config = mpt_ref.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=8,
                                                 num_tasks=2, num_ranks=3)
    text = repr(mpt_ref.MultitaskPromptEmbedding(config, seed=5, dtype=np.float64))
    head, *rows = text.splitlines()
    assert head.startswith("MultitaskPromptEmbedding(task_type=CAUSAL_LM, num_virtual_tokens=4, token_dim=8,")
    assert "num_tasks=2, num_ranks=3" in head and "dtype=float64, seed=5" in head
    assert f"{2 * 4 * 3 + 2 * 3 * 8 + 4 * 8} parameters" in head
    assert rows == ["  prefix_task_cols: (2, 4, 3)", "  prefix_task_rows: (2, 3, 8)", "  embedding.weight: (4, 8)"]


def test_repr_of_an_encoder_says_its_kind_and_mode():
    config = mpt_ref.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=4,
                                         encoder_hidden_size=5, encoder_reparameterization_type="MLP")
    encoder = mpt_ref.PromptEncoder(config, seed=0).eval()
    head = repr(encoder).splitlines()[0]
    assert "encoder_reparameterization_type=MLP" in head and "encoder_hidden_size=5" in head
    assert "eval mode" in head and "dtype=float32" in head
    assert "  mlp_head.0.weight: (5, 4)" in repr(encoder).splitlines()
