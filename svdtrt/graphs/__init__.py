"""ONNX graphs as files, below every stage (docs/architecture.md, "Layout").

One module per operation on a graph, each path in, path out, as NVIDIA Model Optimizer's
``modelopt/onnx``: external data and graphs over 2 GB (:mod:`.files`), slimming by onnxslim
(:mod:`.slim`), fp16 conversion (:mod:`.fp16`), TensorRT deployability (:mod:`.deployability`),
int8 / fp8 Q/DQ quantization and its checks (:mod:`.qdq`), and every ONNX Runtime session of the
package with its options per purpose and the provider checks (:mod:`.sessions`).

The layer knows graphs, not bundles, models or pipelines: it imports svdtrt's foundation modules
(errors, specs, precisions, hints, environment, publishing), onnx, onnxruntime, onnxslim and
numpy, and never torch, :mod:`svdtrt.bundle`, the PyTorch or media side, the runtime or a stage
(``tests/test_imports.py``). Nothing is imported here: each module is loaded when it is used.
"""
