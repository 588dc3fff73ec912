"""Exporters: trained Brevitas models -> deployable integer artifacts, each proven before it returns.

One module per target: `export.onnx` (ONNX QDQ for ONNX Runtime), `export.tflite` (full-integer
TFLite for LiteRT), `export.trt` (TensorRT-bound ONNX + engine build), each a row of `export.registry`
with one entry signature, one record (devices.export_record.ExportRecord) and one failure rule
(export._common.publish). `export.module.export_module` takes a model you built (an nn.Module) through
the same three, their proofs and records. Importing this package loads neither TensorRT nor LiteRT.
"""
