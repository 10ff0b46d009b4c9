"""Comparing the engine's output with the NumPy reference, and with itself
under another weight format or backend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxd.engine import DEBUG_LOGITS, Engine, TokenEvent


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


def logits_and_ids(engine: Engine, audio: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """One clip decoded greedily in a fresh stream (fed whole, then finished):
    the logits of every step and the token ids."""
    s = engine.stream()
    s.enable_debug(DEBUG_LOGITS)
    events = s.feed(audio) + s.finish()
    logits = s.debug_tensor(DEBUG_LOGITS)
    s.close()
    return logits, [e.token_id for e in events if isinstance(e, TokenEvent)]


def token_agreement(a: Sequence[list[int]], b: Sequence[list[int]]) -> tuple[int, int]:
    """Positions with the same token and positions in all, over clips (a[k] and
    b[k] are the ids of clip k); extra or missing tokens count as misses."""
    same = sum(sum(x == y for x, y in zip(p, q, strict=False)) for p, q in zip(a, b, strict=True))
    return same, sum(max(len(p), len(q)) for p, q in zip(a, b, strict=True))
