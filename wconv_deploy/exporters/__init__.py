"""Exporters: turn a folded model into deployable artifacts: ``onnx`` (export), ``precision``
(fp16/int8 variants), ``trt_plan`` (TensorRT planning, no TensorRT import) and ``tensorrt``
(the builder). Import the module you need; this package imports none of them.
"""
