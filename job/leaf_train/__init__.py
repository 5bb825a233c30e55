"""leaf-train: the training job (S3 photos -> VGG16 fine-tune -> ONNX -> registry)."""

__version__ = "0.1.0"
