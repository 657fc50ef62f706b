"""Init strategies: RANDOM, SAMPLE_VOCAB, TEXT and the three MPT source-checkpoint inits."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.modules.init import cycle_ids

T, D, R = 4, 3, 2


@pytest.fixture
def source(tmp_path):
    """A K=3 MPT source checkpoint with distinct, hand-readable values."""
    rng = np.random.default_rng(0)
    tensors = {
        "prompt_embeddings": rng.standard_normal((T, D)).astype(np.float32),
        "prefix_task_cols": rng.standard_normal((3, T, R)).astype(np.float32),
        "prefix_task_rows": rng.standard_normal((3, R, D)).astype(np.float32),
    }
    path = tmp_path / "source.safetensors"
    save_file(tensors, str(path))
    return str(path), tensors


def mpt_config(init, path, **kw):
    return mpt_ref.MultitaskPromptTuningConfig(
        num_virtual_tokens=T, token_dim=D, num_ranks=R, prompt_tuning_init=init,
        prompt_tuning_init_state_dict_path=path, **kw,
    )


def test_average_source_tasks_is_product_of_averages(source):
    path, src = source
    module = mpt_ref.MultitaskPromptEmbedding(mpt_config("AVERAGE_SOURCE_TASKS", path), seed=0)
    sd = module.state_dict()
    c_avg = (src["prefix_task_cols"][0] + src["prefix_task_cols"][1] + src["prefix_task_cols"][2]) / 3
    r_avg = (src["prefix_task_rows"][0] + src["prefix_task_rows"][1] + src["prefix_task_rows"][2]) / 3
    np.testing.assert_allclose(sd["prefix_task_cols"][0], c_avg, rtol=tol.F32_ROUNDED.rtol)
    np.testing.assert_allclose(sd["prefix_task_rows"][0], r_avg, rtol=tol.F32_ROUNDED.rtol)
    np.testing.assert_array_equal(sd["embedding.weight"], src["prompt_embeddings"])
    prompt = module.get_prompt(1, [0])[0]
    np.testing.assert_allclose(prompt, src["prompt_embeddings"] * (c_avg @ r_avg), rtol=tol.F32_SMALL_PRODUCT.rtol)
    avg_of_products = np.mean([c @ r for c, r in zip(src["prefix_task_cols"], src["prefix_task_rows"])], axis=0)
    assert not np.allclose(c_avg @ r_avg, avg_of_products, rtol=tol.DISTINGUISHABLE.rtol)  # PEFT's choice is observable


def test_exact_source_task(source):
    path, src = source
    sd = mpt_ref.MultitaskPromptEmbedding(mpt_config("EXACT_SOURCE_TASK", path, prompt_tuning_init_task=2)).state_dict()
    np.testing.assert_array_equal(sd["prefix_task_cols"][0], src["prefix_task_cols"][2])
    np.testing.assert_array_equal(sd["prefix_task_rows"][0], src["prefix_task_rows"][2])
    np.testing.assert_array_equal(sd["embedding.weight"], src["prompt_embeddings"])


def test_only_source_shared_keeps_random_factors_for_any_k(source):
    path, src = source
    a = mpt_ref.MultitaskPromptEmbedding(mpt_config("ONLY_SOURCE_SHARED", path, num_tasks=5), seed=1).state_dict()
    b = mpt_ref.MultitaskPromptEmbedding(mpt_config("RANDOM", None, num_tasks=5), seed=1).state_dict()
    np.testing.assert_array_equal(a["embedding.weight"], src["prompt_embeddings"])
    np.testing.assert_array_equal(a["prefix_task_cols"], b["prefix_task_cols"])  # same draws, not loaded


def test_source_init_errors(source, tmp_path):
    path, src = source
    with pytest.raises(mpt_ref.ConfigError, match=r"source task in \[0, 3\).*got 3"):
        mpt_ref.MultitaskPromptEmbedding(mpt_config("EXACT_SOURCE_TASK", path, prompt_tuning_init_task=3))
    pt_only = tmp_path / "pt.safetensors"
    save_file({"prompt_embeddings": src["prompt_embeddings"]}, str(pt_only))
    with pytest.raises(mpt_ref.CheckpointError, match="expected key 'prefix_task_cols'"):
        mpt_ref.MultitaskPromptEmbedding(mpt_config("AVERAGE_SOURCE_TASKS", str(pt_only)))
    mpt_ref.MultitaskPromptEmbedding(mpt_config("ONLY_SOURCE_SHARED", str(pt_only)))  # enough for shared
    wrong_rank = mpt_ref.MultitaskPromptTuningConfig(
        num_virtual_tokens=T, token_dim=D, num_ranks=R + 1, prompt_tuning_init="AVERAGE_SOURCE_TASKS",
        prompt_tuning_init_state_dict_path=path)
    with pytest.raises(mpt_ref.CheckpointError, match=r"'prefix_task_cols': expected shape \(K, 4, 3\).*got \(3, 4, 2\)"):
        mpt_ref.MultitaskPromptEmbedding(wrong_rank)
    with pytest.raises(mpt_ref.CheckpointError, match="missing path"):
        mpt_ref.MultitaskPromptEmbedding(mpt_config("ONLY_SOURCE_SHARED", str(tmp_path / "nope.safetensors")))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 40)
    with pytest.raises(mpt_ref.CheckpointError):
        mpt_ref.MultitaskPromptEmbedding(mpt_config("ONLY_SOURCE_SHARED", str(garbage)))


def test_text_init_cycles_token_ids():
    # T=5 prompt tokens from 2 text tokens: ids[k mod 2] (PEFT repeats, then truncates)
    assert cycle_ids([7, 9], 5).tolist() == [7, 9, 7, 9, 7]
    assert cycle_ids([1, 2, 3, 4, 5, 6], 3).tolist() == [1, 2, 3]
    with pytest.raises(mpt_ref.ConfigError, match="0 tokens"):
        cycle_ids([], 3)
    vocab = np.arange(30, dtype=np.float64).reshape(10, 3)
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=5, token_dim=3, prompt_tuning_init="TEXT",
                                      prompt_tuning_init_text="hi", tokenizer_name_or_path="unused")
    weight = mpt_ref.PromptEmbedding(cfg, vocab, init_token_ids=[7, 9]).state_dict()["embedding.weight"]
    assert weight.dtype == np.float32
    np.testing.assert_array_equal(weight, vocab[[7, 9, 7, 9, 7]].astype(np.float32))
    with pytest.raises(mpt_ref.IndexRangeError, match="vocabulary size V"):
        mpt_ref.PromptEmbedding(cfg, vocab, init_token_ids=[10])


def test_text_init_in_inference_mode_is_skipped():
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=3, prompt_tuning_init="TEXT", inference_mode=True,
                                      prompt_tuning_init_text="hi", tokenizer_name_or_path="unused")
    mpt_ref.PromptEmbedding(cfg)  # no tokenizer, no word embeddings needed


def test_text_init_from_local_tokenizer_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = tokenizers.Tokenizer(WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=2, prompt_tuning_init="TEXT",
                                      prompt_tuning_init_text="world hello", tokenizer_name_or_path=str(tmp_path))
    vocab = np.arange(6, dtype=np.float32).reshape(3, 2)
    weight = mpt_ref.PromptEmbedding(cfg, vocab).state_dict()["embedding.weight"]
    np.testing.assert_array_equal(weight, vocab[[2, 1, 2]])


def test_sample_vocab_rows_come_from_the_vocabulary():
    vocab = np.random.default_rng(0).standard_normal((50, 4))
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=6, token_dim=4, prompt_tuning_init="SAMPLE_VOCAB")
    w = mpt_ref.MultitaskPromptEmbedding(cfg, vocab, seed=3, dtype=np.float64).state_dict()["embedding.weight"]
    for row in w:
        assert (np.abs(vocab - row).sum(axis=1) == 0).any()
    w2 = mpt_ref.MultitaskPromptEmbedding(cfg, vocab, seed=3, dtype=np.float64).state_dict()["embedding.weight"]
    np.testing.assert_array_equal(w, w2)
    with pytest.raises(mpt_ref.InputError, match="word_embeddings"):
        mpt_ref.MultitaskPromptEmbedding(cfg, seed=3)
    with pytest.raises(mpt_ref.InputError, match="D=4"):
        mpt_ref.MultitaskPromptEmbedding(cfg, vocab[:, :3], seed=3)


def test_token_dim_taken_from_word_embeddings():
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=2)
    module = mpt_ref.PromptEmbedding(cfg, np.zeros((5, 7)), seed=0)
    assert module.token_dim == 7 and module.config.token_dim == 7 and cfg.token_dim is None
    with pytest.raises(mpt_ref.ConfigError, match="token_dim"):
        mpt_ref.PromptEmbedding(cfg)
