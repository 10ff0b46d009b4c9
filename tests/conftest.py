"""Shared pytest setup. Fixtures live in fixtures_*.py modules, one per concern."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_audio import *  # noqa: F401,F403
from fixtures_model import *  # noqa: F401,F403
from fixtures_mqtt import *  # noqa: F401,F403
