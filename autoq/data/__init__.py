"""Images in, network-ready tensors out.

Decoding and letterboxing happen once per resolution (`load_eval_set`, `load_calibration`); the
uint8 results stay in memory so a trial only converts them to float (`to_input`) and runs the model.
"""

from __future__ import annotations

from autoq.data.coco import EvalSet, load_calibration, load_eval_set, subset_eval_set
from autoq.data.preprocess import Preprocess, prepare_image, read_image, to_input

__all__ = [
    "EvalSet",
    "Preprocess",
    "load_calibration",
    "load_eval_set",
    "prepare_image",
    "read_image",
    "subset_eval_set",
    "to_input",
]
