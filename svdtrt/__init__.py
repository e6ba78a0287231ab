"""svdtrt: Stable Video Diffusion exported to ONNX and TensorRT, run and checked against diffusers."""

__version__ = "0.1.0"
