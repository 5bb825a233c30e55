"""leaf-serve: a small ONNX Runtime server for the leaf classifier.

Open Inference Protocol v2 (KServe V2) REST with the binary tensor extension, an image
endpoint for people, dynamic batching, hot reload from the model registry and
Prometheus metrics. No TensorFlow: the image stays small and starts in seconds.
"""
