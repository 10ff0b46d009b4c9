"""Comparing the engine's output with the NumPy reference."""

from __future__ import annotations

import numpy as np


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the largest magnitude of b."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def agreeing_steps(
    ids: list[int], ref_ids: list[int], logits: np.ndarray, ref_logits: np.ndarray
) -> int:
    """Steps over which two greedy decodings agree, checking that they part only
    where they may: at a step whose reference top-2 margin is within twice the
    logit difference seen so far (a near-tie, where any two float
    implementations may choose differently)."""
    n = min(len(ids), len(ref_ids))
    split = next((i for i in range(n) if ids[i] != ref_ids[i]), n)
    if split < n or len(ids) != len(ref_ids):
        i = min(split, len(ref_logits) - 1, len(logits) - 1)
        seen = np.abs(logits[: i + 1] - ref_logits[: i + 1]).max()
        top2 = np.sort(ref_logits[i])[-2:]
        assert top2[1] - top2[0] < 2 * seen, f"tokens part at step {i} without a near-tie"
    return split
