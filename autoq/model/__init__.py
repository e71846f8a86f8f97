"""ONNX model handling: loading and normalizing a detector (opset >= 13, named nodes, inferred shapes),
its per-node table (shapes, MACs, bytes, quantizability), resolution changes and graph rewrites."""
