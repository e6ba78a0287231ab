"""The ``tensorrt`` backend: a bundle's engines run with torch CUDA tensors as I/O buffers.

Each engine is checked against its sidecar (graph identity, TensorRT version, GPU; see
:mod:`svdtrt.bundle.engines`) and deserialized through Polygraphy's ``EngineFromBytes``
the first time its component is called, so a loop that never decodes never loads the decoder
and, with ``one_engine_at_a_time``, only one engine occupies memory at once (Jetson's unified
memory). Inputs and outputs are torch tensors on the GPU, bound to the execution context by
name (``set_tensor_address``); every call is enqueued (``execute_async_v3``) on the backend's
one CUDA stream. For an engine with a static profile, the UNet call can be captured once in a
CUDA graph and replayed every step (``cuda_graph=True``), which removes the per-layer launch
overhead (TensorRT developer guide, "CUDA Graphs").

TensorRT and Polygraphy are imported only when the backend is created.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch

from ...bundle import engines
from ...environment import cuda_device, quiet_polygraphy, require_tensorrt
from ...errors import EngineError
from ...specs import COMPONENTS
from .base import Backend, ComponentFn

log = logging.getLogger(__name__)


def torch_dtype(trt, dtype) -> torch.dtype:
    """The torch dtype of a TensorRT I/O tensor dtype (``trt.DataType``)."""
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


def is_static(profile: dict) -> bool:
    """True when every input of an optimization profile has min == opt == max, except perhaps on
    the batch axis (axis 0; a static plan keeps the UNet's batch 1 .. 2,
    :func:`svdtrt.build.plan.static_profile`): one shape per batch, each of which can be captured
    in a CUDA graph."""
    return all(p["min"][1:] == p["opt"][1:] == p["max"][1:] for p in profile.values())


class EngineRunner:
    """One engine, its execution context and the tensors bound to it.

    Args:
        trt: the imported ``tensorrt`` module.
        engine: a deserialized ``trt.ICudaEngine``.
        component: the component name (for messages and the output names).
        profile: the sidecar's ``{input: {"min", "opt", "max"}}``.
        stream: the backend's CUDA stream.
        rebuild: the ``svdtrt build`` command to suggest when a shape does not fit.
        cuda_graph: capture the call in a CUDA graph (static profiles only), one per input shape
            (the UNet's batch 2 and 1).
    """

    def __init__(self, trt, engine, component: str, profile: dict, stream: torch.cuda.Stream,
                 rebuild: str, cuda_graph: bool = False):
        self.trt, self.engine, self.component, self.profile = trt, engine, component, profile
        self.stream, self.rebuild = stream, rebuild
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self.use_cuda_graph = cuda_graph and is_static(profile)
        if cuda_graph and not self.use_cuda_graph:
            log.warning("%s: CUDA graph needs a static profile; running without one", component)
        # per input shapes: (CUDA graph, its input buffers, its output buffers)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, dict]] = {}

    def _bind(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set shapes and addresses of ``inputs`` (already on the GPU in the engine's dtypes);
        allocate and bind the outputs. Runs on ``self.stream``."""
        for name in self.inputs:
            tensor = inputs[name]
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f"{self.component}: TensorRT failed to run the engine (see its log with -v)")

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the engine: inputs any device/dtype, outputs float32 CUDA tensors, ready for the
        caller's stream (it waits on this backend's stream)."""
        engines.check_shapes(self.component, self.profile,
                                  {n: tuple(inputs[n].shape) for n in self.inputs}, self.rebuild)
        caller = torch.cuda.current_stream()
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(caller)  # the inputs may still be being written on the caller's stream
            feeds = {n: inputs[n].to("cuda", self.dtypes[n]).contiguous() for n in self.inputs}
            if self.use_cuda_graph:
                outputs = self._replay(feeds)
            else:
                outputs = self._bind(feeds)
                self._execute()
            outputs = {n: t.float() for n, t in outputs.items()}
        caller.wait_stream(self.stream)
        for t in outputs.values():
            t.record_stream(caller)  # allocated on our stream, used and freed on the caller's
        return outputs

    def _replay(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy the inputs into the captured buffers and replay the CUDA graph of these input
        shapes; capture it on the first call with them, after one ordinary run (TensorRT must have
        run once with a shape before capture)."""
        key = tuple(tuple(t.shape) for t in feeds.values())
        if key not in self._graphs:
            inputs = {n: t.clone() for n, t in feeds.items()}
            outputs = self._bind(inputs)
            self._execute()
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._execute()
            self._graphs[key] = (graph, inputs, outputs)
        graph, inputs, outputs = self._graphs[key]
        for n, t in feeds.items():
            inputs[n].copy_(t)
        graph.replay()  # the captured launches carry their own shapes and addresses
        return {n: t.clone() for n, t in outputs.items()}


class TensorRTBackend(Backend):
    """A bundle's TensorRT engines of one precision (built with ``svdtrt build``).

    Args:
        bundle: the opened :class:`svdtrt.bundle.store.Bundle`.
        precision: which engines (``fp32``, ``fp16``, ``int8``, ``fp8``).
        cuda_graph: replay the UNet from a CUDA graph when its engine has a static profile.
        one_engine_at_a_time: release the other engines when one is loaded (for unified-memory
            devices such as Jetson; each stage then pays its engine's load time once per clip).
    Raises:
        BackendUnavailableError: no TensorRT, Polygraphy or CUDA GPU here (one line, with how
            to install them).
    Engines are checked when their component is first requested: ``component`` raises
    :class:`svdtrt.errors.EngineError` for a missing or stale engine, naming the rebuild command.
    """

    name = "tensorrt"

    def __init__(self, bundle, precision: str = "fp16", cuda_graph: bool = False,
                 one_engine_at_a_time: bool = False):
        self.trt = require_tensorrt("the tensorrt backend")
        quiet_polygraphy()
        self.bundle, self.precision = bundle, precision
        self.cuda_graph, self.one_engine_at_a_time = cuda_graph, one_engine_at_a_time
        self.device = torch.device("cuda")
        self.stream = torch.cuda.Stream()
        self.gpu = cuda_device()
        self._checked: dict[str, tuple] = {}
        self._runners: dict[str, EngineRunner] = {}

    def _runner(self, name: str) -> EngineRunner:
        if name not in self._runners:
            from polygraphy.backend.trt import EngineFromBytes

            if self.one_engine_at_a_time:
                self._runners.clear()
                torch.cuda.empty_cache()
            path, sidecar = self._checked[name]
            # The engine's content is checked against the manifest once per file version
            # (Bundle.check_file): later loads pay a stat, not a hash of gigabytes.
            self.bundle.check_file(self.bundle.manifest.engines[f"{name}.{self.precision}"].engine)
            engine = EngineFromBytes(path.read_bytes())()
            if engine is None:
                raise EngineError(f"TensorRT could not deserialize {path}; rebuild it with "
                                  f"'{engines.rebuild_command(self.bundle.path, name, self.precision, sidecar)}'")
            rebuild = engines.rebuild_command(self.bundle.path, name, self.precision, sidecar)
            self._runners[name] = EngineRunner(self.trt, engine, name, sidecar.profile_lists(), self.stream, rebuild,
                                               cuda_graph=self.cuda_graph and name == "unet")
            log.info("%s: loaded %s", name, path)
        return self._runners[name]

    def component(self, name: str) -> ComponentFn:
        if name not in self._checked:
            self._checked[name] = engines.usable_engine(
                self.bundle, name, self.precision, self.trt.__version__, self.gpu)
        outputs = COMPONENTS[name].output_names

        def run(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            results = self._runner(name)(inputs)
            return {n: results[n] for n in outputs}

        return run

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream.synchronize()  # no engine is freed while its work is queued
        self._runners.clear()
        torch.cuda.empty_cache()
