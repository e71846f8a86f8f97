"""Append YOLOX's box decode to a raw-output YOLOX ONNX (like exporting with decode_in_inference=True).

The raw head emits [B, N, 5 + C] rows ``[x, y, w, h, obj, cls...]`` with x, y grid offsets and w, h
log-sizes; after this rewrite the same tensor holds ``[cx, cy, w, h]`` in network-input pixels. The
detections are the same (the `yolox` adapter reads either form with ``decoded``), but pixel-sized
boxes (up to the input size) now share one tensor with 0..1 scores, so int8 activations there cost
accuracy while int16 does not: the trade-off deployment engineers meet with such exports, and the
one the shipped demo detector shows.

Usage: python experiments/decode_in_graph.py raw.onnx decoded.onnx [--strides 8 16 32]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def append_yolox_decode(model: onnx.ModelProto, strides: tuple[int, ...] = (8, 16, 32)) -> onnx.ModelProto:
    """Returns a copy of ``model`` whose single output carries decoded boxes (same name, same shape)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    out = graph.output[0]
    h, w = (d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[2:4])
    grid, stride = [], []
    for s in strides:
        yv, xv = np.meshgrid(np.arange(h // s, dtype=np.float32), np.arange(w // s, dtype=np.float32), indexing="ij")
        grid.append(np.stack([xv.ravel(), yv.ravel()], axis=1))
        stride.append(np.full((grid[-1].shape[0], 1), s, np.float32))
    grid_a, stride_a = np.concatenate(grid)[None], np.concatenate(stride)[None]
    raw = out.name + "_raw"
    for node in graph.node:  # the head now feeds the decode
        node.output[:] = [raw if o == out.name else o for o in node.output]
    n_ch = out.type.tensor_type.shape.dim[2].dim_value
    graph.initializer.extend([
        numpy_helper.from_array(grid_a, "decode_grid"),
        numpy_helper.from_array(stride_a, "decode_stride"),
        numpy_helper.from_array(np.array([2, 2, n_ch - 4], np.int64), "decode_split"),
    ])
    graph.node.extend([
        helper.make_node("Split", [raw, "decode_split"], ["d_xy", "d_wh", "d_rest"], name="decode_split", axis=2),
        helper.make_node("Add", ["d_xy", "decode_grid"], ["d_xy_g"], name="decode_add_grid"),
        helper.make_node("Mul", ["d_xy_g", "decode_stride"], ["d_cxy"], name="decode_mul_stride"),
        helper.make_node("Exp", ["d_wh"], ["d_wh_e"], name="decode_exp"),
        helper.make_node("Mul", ["d_wh_e", "decode_stride"], ["d_pwh"], name="decode_mul_stride_wh"),
        helper.make_node("Concat", ["d_cxy", "d_pwh", "d_rest"], [out.name], name="decode_concat", axis=2),
    ])
    onnx.checker.check_model(model)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    args = ap.parse_args(argv)
    onnx.save(append_yolox_decode(onnx.load(args.src), tuple(args.strides)), args.dst)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
