"""Token agreement of Q8/Q4 with BF16 on the tiny random models, and its floor.

The quantization target asks Q8 tokens to agree with BF16 on >= 99 % of the
positions of the test clips. This prints, for the test suite's two tiny
models (TINY seed 1, TINY2 seed 2) and its three espeak-ng clips, the
agreement of free-running greedy decoding (tests/parity.py's
token_agreement: position by position per clip, extra or missing tokens
count as misses):

* Q8 and Q4 (``voxd quantize``'s defaults) against BF16, same backend;
* the int8 encoder alone: Q8 and Q4 against the same format with the audio
  encoder and adapter kept BF16 (``--keep-encoder bf16``), i.e. what running
  the encoder's matrices on int8 activations and Q8/Q4 weights changes;
* BF16 on the portable backend against BF16 on the default one: the same
  weights, only the order of the float sums differs; this is the floor that
  any format's agreement is measured against on these models;
* how close the calls are: the share of BF16 steps whose top-2 logit margin
  is below 5 % of the logit spread (the size of Q8's first-step logit
  change, see tests/test_quantize.py).

Counts only, no timing. It takes about a minute:

    PYTHONPATH=. python bench/token_agreement.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.parity import logits_and_ids, token_agreement
from tests.speech import SENTENCES, have_espeak, synth
from voxd.engine import Engine
from voxd.tools import quantize as qz
from voxd.tools.devmodel import TINY, TINY2, ModelDims, make_model

MODELS: tuple[tuple[ModelDims, int], ...] = ((TINY, 1), (TINY2, 2))
CLOSE_CALL = 0.05  # top-2 margin / logit std counted as a close call


def close_calls(logits: Sequence[npt.NDArray[Any]]) -> tuple[int, int]:
    """Steps whose top-2 margin is below CLOSE_CALL of the step's logit std."""
    n = total = 0
    for lg in logits:
        top2 = np.sort(lg, axis=1)[:, -2:]
        margin = (top2[:, 1] - top2[:, 0]) / lg.std(axis=1)
        n += int((margin < CLOSE_CALL).sum())
        total += lg.shape[0]
    return n, total


def measure(dims: ModelDims, seed: int, work: Path, audio: list[npt.NDArray[np.float32]]) -> None:
    bf16 = work / f"{dims.name}-s{seed}"
    make_model(bf16, dims, seed=seed)
    dirs = {"bf16": bf16}
    for fmt in ("q8", "q4"):
        for name, extra in ((fmt, []), (f"{fmt} bf16 encoder", ["--keep-encoder", "bf16"])):
            dirs[name] = work / f"{bf16.name}-{name.replace(' ', '-')}"
            args = ["quantize", str(bf16), str(dirs[name]), "--quiet", "--format", fmt, *extra]
            if qz.main(args) != 0:
                raise RuntimeError(f"voxd quantize --format {fmt} {' '.join(extra)} failed")
    ids: dict[str, list[list[int]]] = {}
    logits: list[npt.NDArray[Any]] = []
    backend = "?"
    for name, d in dirs.items():
        with Engine(d) as e:
            backend = e.info.backend
            runs = [logits_and_ids(e, a) for a in audio]
        ids[name] = [r[1] for r in runs]
        if name == "bf16":
            logits = [r[0] for r in runs]
    with Engine(bf16, backend="portable") as e:
        ids["bf16 portable"] = [logits_and_ids(e, a)[1] for a in audio]
    print(f"{dims.name} seed {seed} (default backend: {backend})")
    for ref, name, label in (
        ("bf16", "q8", "q8 vs bf16"),
        ("bf16", "q4", "q4 vs bf16"),
        ("q8 bf16 encoder", "q8", "q8 vs q8 with bf16 encoder"),
        ("q4 bf16 encoder", "q4", "q4 vs q4 with bf16 encoder"),
        ("bf16", "bf16 portable", "bf16 portable vs bf16 " + backend),
    ):
        same, total = token_agreement(ids[ref], ids[name])
        print(f"  {label:40s} {same:4d} / {total:4d} = {same / total:6.1%}")
    n, total = close_calls(logits)
    print(f"  {'bf16 steps with margin < 5 % std':40s} {n:4d} / {total:4d} = {n / total:6.1%}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="where the models go (default: a temp dir)")
    args = ap.parse_args(argv)
    if not have_espeak():
        print("espeak-ng is not installed", file=sys.stderr)
        return 1
    audio = [synth(t) for t in SENTENCES.values()]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for dims, seed in MODELS:
            measure(dims, seed, work, audio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
