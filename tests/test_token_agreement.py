"""bench/token_agreement.py and the agreement count it shares with the tests (parity.py)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from parity import token_agreement
from speech import have_espeak

from bench import token_agreement as ta


def test_agreement_counts_misses_and_length_differences() -> None:
    a = [[5, 6, 7], [1, 2]]
    b = [[5, 9, 7, 8], [1, 2]]
    # clip 1: 2 of 4 positions (the extra token is a miss), clip 2: 2 of 2
    assert token_agreement(a, b) == (4, 6)
    assert token_agreement(a, a) == (5, 5)


def test_close_calls_uses_the_top_two_margin_over_the_std() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((4, 50)).astype(np.float32)
    for i, gap in enumerate((0.0, 0.01, 0.2, 1.0)):
        rows[i, 0] = rows[i].max() + 1.0
        rows[i, 1] = rows[i, 0] - gap * rows[i].std()
    # the std moves a little with the last edit; 0.01 and 0.2 stay on their sides of 0.05
    assert ta.close_calls([rows[:2], rows[2:]]) == (2, 4)


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")
def test_script_prints_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ta.main(["--work", str(tmp_path)]) == 0
    text = out.getvalue()
    figures = re.findall(r"(\d+) / +(\d+) = +([\d.]+)%", text)
    # per model: q8 and q4 vs bf16, each vs its bf16-encoder twin, the floor, close calls
    assert len(figures) == 6 * len(ta.MODELS), text
    for same, total, pct in figures:
        assert 0 <= int(same) <= int(total) and int(total) > 0
        assert float(pct) == pytest.approx(100 * int(same) / int(total), abs=0.06)
