"""StreamedOutputs: inference on a thread, batches readable as they finish."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from autoq.runtime.stream import StreamedOutputs


def test_consumer_reads_batch_0_while_batch_1_is_still_running():
    read_first = threading.Event()

    def batches():
        yield [np.zeros(1)]
        assert read_first.wait(10), "the consumer never saw batch 0 while inference ran"
        yield [np.ones(1)]

    with StreamedOutputs(batches(), 2) as out:
        assert out[0][0][0] == 0
        read_first.set()
        assert [b[0][0] for b in out] == [0, 1] and len(out) == 2
        assert [b[0][0] for b in out[-1:]] == [1]
        assert len(out.finish()) == 2
    with pytest.raises(IndexError):
        out[2]


def test_inference_error_reaches_the_reader_and_switch_interval_is_restored():
    before = sys.getswitchinterval()

    def batches():
        yield [np.zeros(1)]
        raise RuntimeError("ORT failed on batch 1")

    with pytest.raises(RuntimeError, match="ORT failed on batch 1"):
        with StreamedOutputs(batches(), 3) as out:
            assert out[0][0][0] == 0
            out[1]
    assert sys.getswitchinterval() == before


def test_a_failing_consumer_stops_the_inference_thread():
    produced = []

    def batches():
        for i in range(1000):
            produced.append(i)
            time.sleep(0.001)  # an inference batch takes time: 1000 of them cannot finish before the error
            yield [np.full(1, i)]

    with pytest.raises(ValueError):
        with StreamedOutputs(batches(), 1000) as out:
            out[0]
            raise ValueError("metric failed")
    assert len(produced) < 1000 and not out._thread.is_alive()


def test_stream_model_equals_run_model(tmp_path):
    """The streamed pass is the plain pass: same batches, same padding of a fixed batch dim."""
    from onnx import TensorProto, helper

    from autoq.data import Preprocess
    from autoq.runtime.runner import run_model, stream_model
    from autoq.runtime.session import create_session

    for batch in (2, "N"):
        graph = helper.make_graph(
            [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2, 3], keepdims=0)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = create_session(model.SerializeToString())
        images = np.random.default_rng(0).integers(0, 255, (5, 4, 4, 3), dtype=np.uint8)
        want = run_model(session, images, Preprocess(), batch_size=2)
        with stream_model(session, images, Preprocess(), batch_size=2) as out:
            got = out.finish()
        assert len(got) == len(want) == 3 and all(np.array_equal(a[0], b[0]) for a, b in zip(got, want))


def test_foreground_stream_runs_the_pass_first_with_the_same_interface():
    ran = []

    def batches():
        for i in range(3):
            ran.append(i)
            yield [np.full(1, i)]
        raise RuntimeError("ORT failed after 3 batches")

    with StreamedOutputs(batches(), 4, background=False) as out:
        assert ran == [0, 1, 2] and out._thread is None  # before anything was read
        assert [b[0][0] for b in out[:3]] == [0, 1, 2]
        with pytest.raises(RuntimeError, match="after 3 batches"):
            out[3]
