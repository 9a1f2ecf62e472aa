"""Exporters: turn a folded model into deployable artifacts (ONNX first; precision and TensorRT build on it)."""

from wconv_deploy.exporters.onnx import ExportReport, GraphCheck, check_graph, export_onnx, fold_constants

__all__ = ["ExportReport", "GraphCheck", "check_graph", "export_onnx", "fold_constants"]
