"""Session fixtures: tiny random model directories and their reference models.

Built once per test session into pytest's temporary directory, so every test
module (reference self-checks, engine-vs-reference comparisons) shares them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import reference

from voxd.tools.devmodel import TINY, TINY2, make_model

__all__ = ["tiny_model_dir", "tiny2_model_dir", "ref_tiny", "ref_tiny2"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY preset, seed 1: GQA 3:1, heads*head_dim != dim, windows 40/48."""
    out = tmp_path_factory.mktemp("tiny_model")
    make_model(out, TINY, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny2_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY2 preset, seed 2: GQA 2:1, 3 decoder layers, windows 24/32, longer tekken vocab."""
    out = tmp_path_factory.mktemp("tiny2_model")
    make_model(out, TINY2, seed=2)
    return out


@pytest.fixture(scope="session")
def ref_tiny(tiny_model_dir: Path) -> reference.RefModel:
    return reference.load(tiny_model_dir)


@pytest.fixture(scope="session")
def ref_tiny2(tiny2_model_dir: Path) -> reference.RefModel:
    return reference.load(tiny2_model_dir)
