"""Quantization: calibration statistics computed once per model variant (`calibrate`), range
estimators that turn them into per-tensor ranges, and the per-trial QDQ build (`qdq`)."""
