"""PEFT adapter directories written and read by mpt-ref (no torch needed)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.io.adapter_files import ENCODER_NAME, WEIGHTS_NAME
from mpt_ref.io.checkpoint import read_safetensors, write_safetensors

MPT = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=4, num_tasks=3, num_ranks=2,
                                          task_type="CAUSAL_LM")


def encoder(kind):
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=3, token_dim=4, encoder_hidden_size=5, task_type="CAUSAL_LM",
                                      encoder_reparameterization_type=kind)
    return mpt_ref.PromptEncoder(cfg, seed=0).eval()


def test_mpt_round_trip_and_files(tmp_path):
    module = mpt_ref.MultitaskPromptEmbedding(MPT, seed=0)
    module.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", WEIGHTS_NAME]
    tensors, meta = read_safetensors(tmp_path / WEIGHTS_NAME)
    assert meta == {"format": "pt"} and set(tensors) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    assert json.loads((tmp_path / "adapter_config.json").read_text())["inference_mode"] is True
    loaded = mpt_ref.load_peft_adapter(tmp_path)
    assert isinstance(loaded, mpt_ref.MultitaskPromptEmbedding)
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    np.testing.assert_array_equal(loaded.get_prompt(4, [2, 0, 1, 2]), module.get_prompt(4, [2, 0, 1, 2]))


def test_prompt_tuning_round_trip(tmp_path):
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=3, prompt_tuning_init="TEXT", task_type="CAUSAL_LM",
                                      prompt_tuning_init_text="hi", tokenizer_name_or_path="unused/tokenizer")
    module = mpt_ref.PromptEmbedding(cfg, np.eye(5, 3), init_token_ids=[4, 1])
    module.save_pretrained(tmp_path)
    loaded = mpt_ref.load_peft_adapter(tmp_path)  # TEXT init is not re-run: no tokenizer needed
    np.testing.assert_array_equal(loaded.get_prompt(2), module.get_prompt(2))


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_p_tuning_saves_the_eval_table_and_the_full_encoder(tmp_path, kind):
    module = encoder(kind)
    module.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="inference-mode prompt table"):
        table = mpt_ref.load_peft_adapter(tmp_path)
    assert table.inference_mode and list(table.state_dict()) == ["embedding.weight"]
    np.testing.assert_array_equal(table.prompt_table(), module.prompt_table())
    full = mpt_ref.load_peft_adapter(tmp_path, full_encoder=True)
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(full.state_dict()[k], v)
    (tmp_path / ENCODER_NAME).unlink()
    with pytest.raises(mpt_ref.CheckpointError, match=ENCODER_NAME):
        mpt_ref.load_peft_adapter(tmp_path, full_encoder=True)


def test_save_refuses_existing_files_and_writes_nothing(tmp_path):
    module = mpt_ref.MultitaskPromptEmbedding(MPT, seed=0)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"keep me")
    with pytest.raises(mpt_ref.OutputExistsError):
        module.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_NAME]
    assert (tmp_path / WEIGHTS_NAME).read_bytes() == b"keep me"
    module.save_pretrained(tmp_path, overwrite=True)
    assert mpt_ref.load_peft_adapter(tmp_path).num_tasks == 3


def test_source_init_config_loads_without_its_source_file(tmp_path):
    """spec/differences.md #22: PEFT re-runs the source init on load and needs the file; the saved factors win anyway."""
    src = tmp_path / "src.safetensors"
    module = mpt_ref.MultitaskPromptEmbedding(MPT, seed=0)
    write_safetensors(src, {"prompt_embeddings": module.state_dict()["embedding.weight"],
                            "prefix_task_cols": module.state_dict()["prefix_task_cols"],
                            "prefix_task_rows": module.state_dict()["prefix_task_rows"]})
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=4, num_ranks=2, num_tasks=1,
                                              task_type="CAUSAL_LM", prompt_tuning_init="EXACT_SOURCE_TASK", prompt_tuning_init_task=1,
                                              prompt_tuning_init_state_dict_path=str(src))
    target = mpt_ref.MultitaskPromptEmbedding(cfg, seed=1)
    target.save_pretrained(tmp_path / "adapter")
    src.unlink()
    loaded = mpt_ref.load_peft_adapter(tmp_path / "adapter")
    assert loaded.config.prompt_tuning_init == "EXACT_SOURCE_TASK"
    np.testing.assert_array_equal(loaded.get_prompt(2, [0]), target.get_prompt(2, [0]))


def test_broken_adapters_raise_checkpoint_error(tmp_path):
    module = mpt_ref.MultitaskPromptEmbedding(MPT, seed=0)
    module.save_pretrained(tmp_path)
    weights = read_safetensors(tmp_path / WEIGHTS_NAME)[0]
    cases = {
        "missing factor": ({k: v for k, v in weights.items() if k != "prefix_task_rows"}, "prefix_task_rows"),
        "no table": ({k: v for k, v in weights.items() if k != "prompt_embeddings"}, "prompt_embeddings"),
        "wrong shape": ({**weights, "prefix_task_cols": np.zeros((3, 3, 3), np.float32)}, "expected shape"),
        "non-finite": ({**weights, "prompt_embeddings": np.full((3, 4), np.nan, np.float32)}, "finite"),
        "int dtype": ({**weights, "prompt_embeddings": np.zeros((3, 4), np.int64)}, "float"),
    }
    for name, (tensors, match) in cases.items():
        write_safetensors(tmp_path / WEIGHTS_NAME, tensors, overwrite=True)
        with pytest.raises(mpt_ref.CheckpointError, match=match):
            mpt_ref.load_peft_adapter(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(mpt_ref.CheckpointError, match="adapter_model.safetensors or adapter_model.bin"):
        mpt_ref.load_peft_adapter(tmp_path)
    with pytest.raises(mpt_ref.CheckpointError, match="directory"):
        mpt_ref.load_peft_adapter(tmp_path / "nope")


def test_extra_keys_are_ignored_with_a_warning(tmp_path):
    module = mpt_ref.MultitaskPromptEmbedding(MPT, seed=0)
    module.save_pretrained(tmp_path)
    weights = read_safetensors(tmp_path / WEIGHTS_NAME)[0]
    write_safetensors(tmp_path / WEIGHTS_NAME, {**weights, "base_model.classifier.weight": np.ones((2, 4), np.float32)},
                      overwrite=True)
    with pytest.warns(UserWarning, match="base_model.classifier.weight"):
        mpt_ref.load_peft_adapter(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.save_pretrained(tmp_path, overwrite=True)
        mpt_ref.load_peft_adapter(tmp_path)


def test_inspect_and_export_cli_on_an_adapter_dir(tmp_path, capsys):
    import mpt_ref.cli

    module = mpt_ref.MultitaskPromptEmbedding(MPT, seed=0)
    module.save_pretrained(tmp_path / "ad")
    assert mpt_ref.cli.main(["inspect", str(tmp_path / "ad")]) == 0
    out = capsys.readouterr().out
    assert "MultitaskPromptTuningConfig" in out and "prefix_task_rows" in out and "(3, 2, 4)" in out
    assert "sha256" in out
    assert mpt_ref.cli.main(["export", str(tmp_path / "ad"), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    assert mpt_ref.cli.main(["inspect", str(tmp_path / "missing")]) == 2


def test_save_refuses_a_config_without_task_type_and_writes_nothing(tmp_path):
    """PEFT builds a plain PeftModel for task_type None, which drops the prompt without a word."""
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=3)
    with pytest.raises(mpt_ref.ConfigError, match="task_type.*ignores the prompt"):
        mpt_ref.PromptEmbedding(cfg, seed=0).save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("make", [
    lambda: mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=3, task_type="FEATURE_EXTRACTION",
                                                               num_layers=4, num_attention_heads=2), seed=0),
    lambda: mpt_ref.MultitaskPromptEmbedding(MPT, seed=0),
    lambda: encoder("LSTM"),
], ids=["pt", "mpt", "lstm"])
def test_saved_config_carries_what_peft_writes_and_a_model_card(tmp_path, make):
    module = make()
    module.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_version"] == mpt_ref._version.PEFT_VERSION == "0.21.2"
    assert saved["task_type"] == module.config.task_type.value and saved["inference_mode"] is True
    for key in ("num_layers", "num_attention_heads"):  # written when known (PEFT fills them from the base model)
        assert key in saved and saved[key] == getattr(module.config, key)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "PeftModel.from_pretrained" in card
    assert f"- PEFT {saved['peft_version']}" in card and saved["peft_type"] in card
    assert module.config.peft_version is None  # the module's own config is not changed by saving


def test_an_existing_model_card_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("my card")
    mpt_ref.MultitaskPromptEmbedding(MPT, seed=0).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my card"


def test_from_pretrained_on_each_class(tmp_path):
    mpt = mpt_ref.MultitaskPromptEmbedding(MPT, seed=0)
    mpt.save_pretrained(tmp_path / "mpt")
    loaded = mpt_ref.MultitaskPromptEmbedding.from_pretrained(tmp_path / "mpt")
    np.testing.assert_array_equal(loaded.get_prompt(2, [1, 0]), mpt.get_prompt(2, [1, 0]))
    with pytest.raises(mpt_ref.ConfigError, match="expected an adapter of a PromptEmbedding"):
        mpt_ref.PromptEmbedding.from_pretrained(tmp_path / "mpt")
    pt = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=3, task_type="CAUSAL_LM"),
                                 seed=0)
    pt.save_pretrained(tmp_path / "pt")
    np.testing.assert_array_equal(mpt_ref.PromptEmbedding.from_pretrained(tmp_path / "pt").get_prompt(3),
                                  pt.get_prompt(3))
    enc = encoder("MLP")
    enc.save_pretrained(tmp_path / "enc")
    full = mpt_ref.PromptEncoder.from_pretrained(tmp_path / "enc", full_encoder=True)
    np.testing.assert_array_equal(full.get_prompt(2), enc.get_prompt(2))
    with pytest.warns(UserWarning, match="prompt table"):
        table = mpt_ref.PromptEncoder.from_pretrained(tmp_path / "enc")
    np.testing.assert_allclose(table.get_prompt(2), enc.get_prompt(2), rtol=tol.EXACT.rtol, atol=tol.EXACT.atol)


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_prompt_encoder_get_prompt_is_the_encoder_on_arange_rows(kind):
    enc = encoder(kind)
    T = enc.total_virtual_tokens
    want = np.stack([enc.prompt_table()] * 3)  # prompt_table: eval mode on arange(T)
    np.testing.assert_array_equal(enc.get_prompt(3), want)
    assert enc.get_prompt(0).shape == (0, T, enc.token_dim)
    with pytest.raises(mpt_ref.MptRefError, match="batch_size"):
        enc.get_prompt(-1)


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"])
def test_save_refuses_task_types_whose_peft_adapter_needs_a_base_model_head(tmp_path, task_type):
    """PEFT 0.21.2 raised KeyError 'base_model.score.weight' loading such an adapter saved without the head."""
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=3, task_type=task_type)
    with pytest.raises(mpt_ref.ConfigError, match=f"got {task_type}.*modules_to_save"):
        mpt_ref.PromptEmbedding(cfg, seed=0).save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a").exists()


# -- whole-adapter atomic saves, modes, non-finite values, config sizes ------------------------

def _two_adapters():
    small = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=4), seed=1)
    large = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, token_dim=4), seed=2)
    return small, large


KILL_SCRIPT = """
import mpt_ref
small = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=4), seed=1)
large = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, token_dim=4), seed=2)
"""


def test_save_pretrained_is_atomic_per_adapter_under_sigkill(tmp_path):
    """Regression: 41 of 100 kills left one save's config beside another save's weights (loading silently),
    and 71 stray .tmp files. Now a kill leaves the old or the new adapter, whole."""
    import random

    from _kill import kill_writers

    small, large = _two_adapters()
    target = tmp_path / "adapter"
    small.save_pretrained(target)
    (target / "notes.txt").write_text("mine")  # a user's file beside the adapter: kept
    rng = random.Random(0)
    want = {3: small.state_dict()["embedding.weight"], 5: large.state_dict()["embedding.weight"]}

    def check() -> None:
        loaded = mpt_ref.load_peft_adapter(target)  # never mixed: a mixture fails the shape check
        table = loaded.state_dict()["embedding.weight"]
        np.testing.assert_array_equal(table, want[table.shape[0]])
        assert (target / "notes.txt").read_text() == "mine"
        assert sorted(p.name for p in target.iterdir()) == ["README.md", "adapter_config.json", WEIGHTS_NAME, "notes.txt"]

    kill_writers(KILL_SCRIPT, "(small if i % 2 else large).save_pretrained(sys.argv[1], overwrite=True)", [str(target)],
                 kills=12, delay=lambda: rng.uniform(0.0, 0.05), after_kill=check)
    for stray in tmp_path.glob(".*.mpt-ref-tmp"):  # at most the staging directory of the killed save
        assert stray.is_dir()
    small.save_pretrained(target, overwrite=True)  # a normal save also sweeps what the killed saves left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_saved_files_follow_the_umask(tmp_path):
    """Regression: files came out 0600 (mkstemp's mode) instead of following the umask."""
    import os
    import stat

    old = os.umask(0o027)
    try:
        _two_adapters()[0].save_pretrained(tmp_path / "a")
        write_safetensors(tmp_path / "w.safetensors", {"a": np.ones(1, np.float32)})
    finally:
        os.umask(old)
    for p in [tmp_path / "a" / "adapter_config.json", tmp_path / "a" / WEIGHTS_NAME, tmp_path / "w.safetensors"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750


def test_overwrite_drops_every_old_adapter_file(tmp_path):
    enc = encoder("MLP")
    enc.save_pretrained(tmp_path)
    assert (tmp_path / ENCODER_NAME).exists()
    _two_adapters()[0].save_pretrained(tmp_path, overwrite=True)
    assert not (tmp_path / ENCODER_NAME).exists()  # no stale encoder beside a prompt-tuning adapter


@pytest.mark.parametrize("value", [1e300, 3.5e38, np.inf, np.nan])
def test_values_beyond_float32_are_refused_on_load(tmp_path, value):
    """Regression: a float64 adapter holding 1e300 or 3.5e38 loaded as inf into a float32 module."""
    small = _two_adapters()[0]
    small.save_pretrained(tmp_path)
    table = np.zeros((3, 4), np.float64)
    table[1, 2] = value
    write_safetensors(tmp_path / WEIGHTS_NAME, {"prompt_embeddings": table}, overwrite=True)
    with pytest.raises(mpt_ref.CheckpointError, match="finite"):
        mpt_ref.load_peft_adapter(tmp_path)
    before = small.state_dict()
    with pytest.raises(mpt_ref.CheckpointError, match="finite"):
        small.load_state_dict({"embedding.weight": table})
    np.testing.assert_array_equal(small.state_dict()["embedding.weight"], before["embedding.weight"])
    if np.isfinite(value):  # float64 modules hold it fine
        m = mpt_ref.PromptEmbedding(small.config, dtype=np.float64)
        m.load_state_dict({"embedding.weight": table})


def test_hostile_config_sizes_fail_before_allocating(tmp_path):
    """Regression: 12000 x 12000 cost 1.6 GiB and 5.3 s before CheckpointError; 10**9 a bare MemoryError."""
    import tracemalloc

    _two_adapters()[0].save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "num_virtual_tokens": 12000, "token_dim": 12000}))
    tracemalloc.start()
    try:
        with pytest.raises(mpt_ref.CheckpointError, match="expected shape"):
            mpt_ref.load_peft_adapter(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "num_virtual_tokens": 10**9, "token_dim": 10**9}))
    with pytest.raises(mpt_ref.ConfigError, match="at most"):
        mpt_ref.load_peft_adapter(tmp_path)
    with pytest.raises(mpt_ref.ConfigError, match="at most"):
        mpt_ref.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10**5, token_dim=10, num_tasks=10**5, num_ranks=10**3)
    (tmp_path / "adapter_config.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(mpt_ref.ConfigError, match="at most"):
        mpt_ref.load_peft_adapter(tmp_path)


def test_save_through_a_symlinked_directory_keeps_the_link_and_the_mode(tmp_path):
    import os
    import stat

    real = tmp_path / "real"
    real.mkdir()
    os.chmod(real, 0o700)
    (tmp_path / "link").symlink_to(real)
    _two_adapters()[0].save_pretrained(tmp_path / "link")
    _two_adapters()[1].save_pretrained(tmp_path / "link", overwrite=True)
    assert (tmp_path / "link").is_symlink() and (real / WEIGHTS_NAME).is_file()
    assert stat.S_IMODE(real.stat().st_mode) == 0o700
    assert mpt_ref.load_peft_adapter(tmp_path / "link").state_dict()["embedding.weight"].shape == (5, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
