"""Embedded demo: deterministic synthetic COCO-format shapes dataset and a small bundled ONNX detector."""
