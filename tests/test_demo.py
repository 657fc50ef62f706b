"""``mpt-ref demo`` exercises MPT and both encoders and passes (the README's first command)."""

import mpt_ref.cli


def test_demo_passes_for_mpt_and_both_encoders(capsys):
    assert mpt_ref.cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    for label in ("MultitaskPromptEmbedding", "PromptEncoder MLP", "PromptEncoder LSTM"):
        assert label in out
    assert "FAIL" not in out and out.rstrip().endswith("mpt-ref demo: PASS")
