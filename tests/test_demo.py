"""``mpt-ref demo`` exercises MPT and both encoders and passes (the README's first command), checking
every entry of every gradient, as it says."""

import re

import mpt_ref.cli


def test_demo_passes_for_mpt_and_both_encoders(capsys):
    assert mpt_ref.cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    for label in ("MultitaskPromptEmbedding", "PromptEncoder MLP", "PromptEncoder LSTM"):
        assert label in out
    assert "FAIL" not in out and out.rstrip().endswith("mpt-ref demo: PASS")
    # was: the LSTM's weight_ih_l0 (20, 8) row checked 40 of its 160 entries while the demo said "every gradient"
    rows = re.findall(r"^  (\S+)\s+\(([\d, ]*)\)\s+(\d+)/(\d+) ", out, flags=re.M)
    assert len(rows) == 3 + 7 + 21  # MPT; MLP encoder (E + 3 linears); LSTM (E + 2 layers x 2 directions x 4 + 2 linears)
    for key, shape, checked, size in rows:
        n = 1
        for d in filter(None, shape.replace(" ", "").split(",")):
            n *= int(d)
        assert int(checked) == int(size) == n, key
    assert "lstm_head.weight_ih_l0           (20, 8)          160/160" in out
