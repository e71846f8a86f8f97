"""autoq: find, overnight, how to quantize an ONNX detector for an edge NPU.

Public API (heavy dependencies are imported only when used)::

    from autoq import load_config, Project, run_search, QuantConfig
    project = Project(load_config("autoq.yaml"))
    study = run_search(project, budget=40)
"""

from __future__ import annotations

from typing import Any

from autoq.errors import (
    AutoqError,
    ConfigError,
    DataError,
    ExportError,
    ModelError,
    SearchError,
)
from autoq.plan import Calibration, Precision, QuantConfig, TrialResult

__version__ = "0.1.0"

__all__ = [
    "AutoqError",
    "Calibration",
    "ConfigError",
    "DataError",
    "ExportError",
    "ModelError",
    "Precision",
    "Project",
    "QuantConfig",
    "SearchError",
    "TrialResult",
    "export_trial",
    "load_config",
    "run_search",
]

_LAZY = {
    "load_config": "autoq.config",
    "Project": "autoq.pipeline",
    "run_search": "autoq.app.search",
    "export_trial": "autoq.export.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoq' has no attribute {name!r}")
