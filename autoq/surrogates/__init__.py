"""Cheap stand-ins for measurements a trial cannot afford to make on real hardware.

``cost_model`` predicts per-node latency on an NPU target from the node table (FLOPs, bytes,
shapes) and a data-driven target description (``targets/*.yaml``), so the search can trade
accuracy against speed without a board in the loop. ``profiles`` parses on-device profiler
outputs (Horizon hrt_model_exec, RKNN eval_perf, ONNX Runtime), ``fit`` fits a target's numbers to
measurements (``autoq cost-model fit``, see `autoq.app.cost_model`), and ``measure`` times a QDQ model in ONNX
Runtime for the ``ort-cpu`` target's measured mode. The model itself stays a small, explainable roofline.
"""

from __future__ import annotations
