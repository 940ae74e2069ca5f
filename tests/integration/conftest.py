"""The integration tests import their helpers (`servers.py`, `procs.py`) by name from here.

Their fixtures (`files`, `callbacks`, `stack`) live in the top conftest, so the tests of the
production backends (tests/aws, tests/kafka, tests/sentinel) share them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
