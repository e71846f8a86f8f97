"""Shared fixtures: where the real data lives (optional), and a tiny valid project on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    return Path(os.environ.get("AUTOQ_REAL_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture
def real_data() -> Path:
    """The shared YOLOX-nano + coco_tiny data; skips the test when absent."""
    d = real_data_dir()
    if not (d / "models" / "yolox_nano.onnx").is_file():
        pytest.skip(f"real data not found at {d} (set AUTOQ_REAL_DATA to the folder with models/ and coco_tiny/)")
    return d
