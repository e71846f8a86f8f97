"""Imports every built-in exporter module so each registers its format name in ``EXPORTERS``.

``EXPORTERS`` imports this module the first time a format is looked up, so importing
``autoq.export`` stays light. A new built-in format adds one import here.
"""

from __future__ import annotations

from autoq.export import (  # noqa: F401 - imported for their @EXPORTERS.register side effect
    ascend,
    horizon,
    horizon_j6,
    onnx_qdq,
    pulsar,
    pulsar2,
    rknn,
    tensorrt,
    vastai,
)

__all__: list[str] = []
