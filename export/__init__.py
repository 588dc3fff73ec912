"""Exporters: trained Brevitas models -> deployable integer artifacts, each proven before it returns.

One module per target: `export.onnx` (ONNX QDQ for ONNX Runtime), `export.tflite` (full-integer
TFLite for LiteRT), `export.trt` (TensorRT-bound ONNX + engine build). Importing this package loads
neither TensorRT nor LiteRT.
"""
