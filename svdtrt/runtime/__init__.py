"""Runtime: SVD's sampling loop over backends (torch, onnxruntime), and clip writing."""
