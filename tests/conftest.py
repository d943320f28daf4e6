"""Shared test set-up: the helpers in tools/ (webhook receiver) are importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
