"""Strict checkers of export bundles, one per format, written from each vendor's documented rules (not from
autoq's exporters): ``check(bundle_dir) -> [violation, ...]``, [] when the tool would accept the bundle."""

from __future__ import annotations

from checkers import ascend, horizon, horizon_j6, pulsar, pulsar2, tensorrt, vastai

CHECKERS = {
    "horizon": horizon.check,
    "horizon-j6": horizon_j6.check,
    "axera-pulsar": pulsar.check,
    "axera-pulsar2": pulsar2.check,
    "vastai": vastai.check,
    "ascend": ascend.check,
    "tensorrt": tensorrt.check,
}
