"""Helpers for the test suite and benchmarks; not used by the runtime itself.

:mod:`edge_infer.testing.tflite_builder` writes real TFLite models from numpy
weights (no TensorFlow needed), so tests can cover input shapes, dtypes and
per-invoke costs that the bundled model does not have. It needs the
``flatbuffers`` and ``tflite`` (schema classes) packages, which the runtime does
not, so it is not imported here.
"""
