"""What a trial is judged on: the objective metric (`metrics`: COCO mAP by default, top-1,
output cosine or a user plugin; `accuracy` holds COCO mAP and pseudo ground truth), output
similarity (`similarity`) and latency beside it.

Everything a trial does not change (images, ground truth, the float baseline) is prepared once by
the caller, so a trial's accuracy costs one ORT pass, one decode and one COCOeval.
"""

from __future__ import annotations
