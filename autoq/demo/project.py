"""`autoq demo`: a self-contained project (synthetic data + the shipped detector) in one folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from autoq.demo.synthetic import generate_dataset
from autoq.errors import ModelError

DEMO_CONFIG = """\
# autoq demo project, written by `autoq demo`. Edit and rerun `autoq search -c {config}`.
model:
  path: model.onnx          # the shipped demo detector (YOLOX-style head, SiLU, raw 0..255 BGR input)
  adapter: demo
data:
  eval_images: data/eval/images
  eval_annotations: data/eval/annotations.json
  calib_images: data/calib
  calib_count: 32
preprocess:
  resize: letterbox
  pad_value: 114
  color: bgr
  mean: [0, 0, 0]
  std: [1, 1, 1]
target:
  name: generic-npu
space:
  precisions: [int8, int16, float]
  granularities: [per_tensor, per_channel]
  methods: [minmax]
search:
  budget: 30
  seed: 0
  study_name: demo
tracking:
  experiment: autoq-demo
"""


def shipped_detector() -> Path:
    """Path of the demo detector ONNX inside the installed package."""
    path = Path(str(resources.files("autoq.demo") / "detector.onnx"))
    if not path.is_file():
        raise ModelError(
            f"{path} is missing: reinstall autoq, or train it with `python experiments/train_demo_detector.py`"
        )
    return path


def write_demo_project(directory: Path, *, log: Callable[[str], None] = print) -> Path:
    """Writes data, model and autoq.yaml into ``directory`` (kept if already there); returns the config path."""
    directory = directory.expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    generate_dataset(directory / "data")
    model = directory / "model.onnx"
    src = shipped_detector()
    if not model.is_file() or model.read_bytes() != src.read_bytes():
        shutil.copyfile(src, model)
    config = directory / "autoq.yaml"
    if not config.is_file():
        config.write_text(DEMO_CONFIG.format(config=config), encoding="utf-8")
    log(f"demo project in {directory}")
    return config
