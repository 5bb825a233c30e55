"""Open Inference Protocol v2 over gRPC: the proto, protoc's output, and leaf-serve's service."""
