"""What a trial is judged on: accuracy (COCO mAP) here; similarity and latency beside it.

Everything a trial does not change (images, ground truth, the float baseline) is prepared once by
the caller, so a trial's accuracy costs one ORT pass, one decode and one COCOeval.
"""

from __future__ import annotations
