"""What every exporter receives (`ExportContext`) and the registry exporters join.

An exporter turns one trial's decisions into the files a vendor compiler reads. It gets everything
it needs in one frozen record, so exporters never reach back into the study, the model cache or
the dataset, and a user plugin (``my_pkg.my_mod:write_thing``) sees exactly what built-ins see.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoq.plan import Precision, QuantConfig
from autoq.registry import Registry

if TYPE_CHECKING:
    from autoq.data.preprocess import Preprocess

__all__ = ["EXPORTERS", "ExportContext", "Exporter", "safe_stem"]

# An exporter: ``fn(ctx, out, **typed_keyword_options) -> files written``. ``out`` is a file path or
# an existing directory (the exporter then picks the file name).
Exporter = Callable[..., "list[Path]"]

EXPORTERS: Registry[Exporter] = Registry("export format", builtins_module="autoq.export.horizon")


@dataclass(frozen=True)
class ExportContext:
    """One trial, ready to be written for a compiler.

    Attributes:
        config: the trial's QuantConfig.
        model_path: the ONNX the compiler should read; its node names match those in ``config``.
        input_name: the model's image input.
        input_shape: ``(1, 3, H, W)`` at the trial's resolution.
        node_names: quantizable node names (``config.precision_of`` applies to these).
        node_ops: node name -> op type (all nodes of the model, for messages and op-type rules).
        preprocess: how images become the model input (``autoq.data.preprocess.Preprocess``).
        study, trial, map_drop, latency_ms: provenance written into file headers.
        target: hardware target name, e.g. ``"generic-npu"``, ``"horizon-x3"``, ``"horizon-j5"``.
        calib_dir: directory of calibration tensors for the compiler, if prepared.
    """

    config: QuantConfig
    model_path: Path
    input_name: str
    input_shape: tuple[int, ...]
    node_names: tuple[str, ...]
    node_ops: Mapping[str, str]
    preprocess: Preprocess
    study: str
    trial: int | None
    map_drop: float | None
    latency_ms: float | None
    target: str
    calib_dir: Path | None = None

    def assignment(self) -> dict[str, Precision]:
        """Precision of every quantizable node, in graph order."""
        return self.config.assignment(self.node_names)

    def overrides_outside_model(self) -> list[str]:
        """Nodes the config overrides that the model does not have (a config from another variant)."""
        known = set(self.node_names) | set(self.node_ops)
        return sorted(n for n in self.config.nodes if n not in known)

    def label(self) -> str:
        """A file-name-safe name for this trial, e.g. ``yolox_s_trial12``."""
        base = self.study or Path(self.model_path).stem or "model"
        if self.trial is not None:
            base = f"{base}_trial{self.trial}"
        return safe_stem(base)


def safe_stem(text: str) -> str:
    """``text`` reduced to characters every file system and compiler accepts in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"
