"""Quantization: calibration statistics computed once per model variant (`calibrate`), range
estimators that turn them into per-tensor ranges (`ranges`), the per-trial QDQ build (`qdq`, with
ORT's quantizer sped up behind a version guard in `ort_fast`), and what the target's compiler
quantizes differently, simulated on top (`toolchain_sim`)."""
