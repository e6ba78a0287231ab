"""The ``tensorrt`` backend: a bundle's engines run with torch CUDA tensors as I/O buffers.

Each engine is checked against its sidecar (graph identity, TensorRT version, GPU; see
:mod:`svdtrt.bundle.engines`) and deserialized through Polygraphy's ``EngineFromBytes``
the first time its component is called, so a loop that never decodes never loads the decoder
and, with ``one_engine_at_a_time``, only the engines of the stage in use occupy memory
(Jetson's unified memory). Inputs and outputs are torch tensors on the GPU, bound to the
execution context by name (``set_tensor_address``) at 256-byte aligned addresses; every call is
enqueued (``execute_async_v3``) on the backend's one CUDA stream, which waits for the caller's
stream before and is waited on after.

Every execution context is created without device memory of its own
(``ExecutionContextAllocationStrategy.USER_MANAGED``) and runs in one activation block that the
backend owns, sized to the largest engine loaded (``device_memory_size_v2``), as demoDiffusion
shares its block between engines (:class:`ActivationBlock`; docs/tensorrt.md, "Second audit", defect 10).
The engines run one after another on one stream, so they never use the block at once.

For an engine with a static profile, a UNet call can be captured once in a CUDA graph and
replayed every step (``cuda_graph=True``), which removes the per-layer launch overhead; each
captured graph has an execution context of its own, because a graph is specific to the state
of the context it was captured from (TensorRT developer guide, "CUDA Graphs"; docs/tensorrt.md,
"Second audit", defect 4).

TensorRT and Polygraphy are imported only when the backend is created. The calls used need
TensorRT 10.3 (:data:`svdtrt.environment.TENSORRT_FLOOR`).
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch

from ...bundle import engines
from ...environment import cuda_device, quiet_polygraphy, require_tensorrt
from ...errors import EngineError, first_line
from ...specs import COMPONENTS, UNET_COMPONENTS
from .base import Backend, ComponentFn

log = logging.getLogger(__name__)

#: The alignment in bytes of every address bound with ``set_tensor_address`` ("The pointer must
#: have at least 256-byte alignment", ``IExecutionContext::setTensorAddress`` in TensorRT 10.3's
#: and 11.1's ``NvInferRuntime.h``). A view into a larger tensor (``t.expand(1)`` of a timestep
#: list, ``x[-1:]``) can start anywhere in its storage.
TENSOR_ALIGNMENT = 256
#: The alignment of the activation block: ``setDeviceMemoryV2`` asks for "the cuda memory
#: alignment property"; 512 bytes is the texture alignment of current GPUs and what torch's
#: CUDA caching allocator rounds every block to.
BLOCK_ALIGNMENT = 512


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


def aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                  alignment: int = TENSOR_ALIGNMENT) -> torch.Tensor:
    """An uninitialised contiguous tensor whose first byte is ``alignment``-aligned: a view into a
    byte buffer ``alignment`` bytes longer than needed, started at the first aligned address."""
    count = torch.Size(shape).numel()
    nbytes = max(count, 1) * dtype.itemsize
    raw = torch.empty(nbytes + alignment, dtype=torch.uint8, device=device)
    offset = -raw.data_ptr() % alignment
    return raw[offset:offset + nbytes].view(dtype)[:count].view(shape)


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself when it is contiguous and starts :data:`TENSOR_ALIGNMENT`-aligned, else an
    aligned contiguous copy of it (``.contiguous()`` returns an offset view unchanged)."""
    if tensor.is_contiguous() and tensor.data_ptr() % TENSOR_ALIGNMENT == 0:
        return tensor
    return aligned_empty(tuple(tensor.shape), tensor.dtype, tensor.device).copy_(tensor)


class ActivationBlock:
    """The one activation block of a backend's execution contexts (``USER_MANAGED`` contexts,
    ``set_device_memory``), grown to the largest engine attached.

    TensorRT's default (``STATIC``) gives every context its own block of the engine's maximum
    over the profile, so every loaded engine keeps its activations allocated: the decoder's
    full-clip block stays resident through the denoising loop. One block serves all, because the
    engines run one at a time on one stream (``setDeviceMemoryV2``: the memory is in use from
    ``enqueueV3`` until the work completes, and must not be used by a context running in parallel).

    Growing the block re-points every attached context to the new one (after the stream has
    finished with the old); :attr:`generation` counts the blocks, so that a CUDA graph captured
    on an older block is dropped rather than replayed.

    Args:
        stream: the backend's CUDA stream (every context runs on it).
        device: where the block is allocated.
    """

    def __init__(self, stream, device: torch.device):
        self.stream, self.device = stream, device
        self.size, self.generation = 0, 0
        self._memory: torch.Tensor | None = None
        self._contexts: list = []

    def attach(self, context, size: int) -> None:
        """Run ``context`` in the block, first growing it to ``size`` bytes (the engine's
        ``device_memory_size_v2``) if it is smaller."""
        if size > self.size:
            self.stream.synchronize()  # queued work may still use the old block
            self._memory = None
            with torch.cuda.stream(self.stream):
                self._memory = aligned_empty((size,), torch.uint8, self.device, BLOCK_ALIGNMENT)
            self.size, self.generation = size, self.generation + 1
            log.info("activation block: %.1f MiB", size / 2**20)
            for other in self._contexts:
                other.set_device_memory(self._memory.data_ptr(), self.size)
        context.set_device_memory(self._memory.data_ptr() if self._memory is not None else 0, self.size)
        self._contexts.append(context)

    def detach(self, context) -> None:
        """Stop re-pointing ``context`` (it is being released)."""
        self._contexts = [c for c in self._contexts if c is not context]

    def free(self) -> None:
        """Release the block once no context runs in it any more (every runner released, the
        stream finished); the next :meth:`attach` allocates a new one."""
        self._contexts, self._memory, self.size = [], None, 0


class EngineRunner:
    """One engine, its execution contexts and the tensors bound to them.

    Args:
        trt: the imported ``tensorrt`` module.
        engine: a deserialized ``trt.ICudaEngine``.
        component: the component name (for messages and the output names).
        profile: the sidecar's ``{input: {"min", "opt", "max"}}``.
        stream: the backend's CUDA stream.
        block: the backend's :class:`ActivationBlock`.
        device: where the inputs are bound and the outputs allocated (the backend's GPU).
        rebuild: the ``svdtrt build`` command to suggest when a shape does not fit.
        cuda_graph: capture the call in a CUDA graph (static profiles only), one per input shape
            (the UNet's batch 2 and 1), each with its own execution context.
    Raises:
        EngineError: TensorRT could not create an execution context.
    """

    def __init__(self, trt, engine, component: str, profile: dict, stream, block: ActivationBlock,
                 device: torch.device, rebuild: str, cuda_graph: bool = False):
        self.trt, self.engine, self.component, self.profile = trt, engine, component, profile
        self.stream, self.block, self.device, self.rebuild = stream, block, device, rebuild
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self.use_cuda_graph = cuda_graph and is_static(profile)
        if cuda_graph and not self.use_cuda_graph:
            log.warning("%s: CUDA graph needs a static profile; running without one", component)
        self.context = None if self.use_cuda_graph else self._new_context()
        # per input shapes: (its context, CUDA graph, input buffers, output buffers)
        self._graphs: dict[tuple, tuple] = {}
        self._graphs_generation = block.generation

    def _new_context(self):
        context = self.engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise EngineError(f"{self.component}: TensorRT could not create an execution context (see its log "
                              "with -v)")
        self.block.attach(context, self.engine.device_memory_size_v2)
        return context

    def _bind(self, context, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set the shapes and addresses of ``inputs`` (aligned, on the GPU in the engine's dtypes)
        on ``context``; allocate and bind the outputs. Every call's result is checked: TensorRT
        refuses a shape outside the profile and an unaligned address by returning False."""
        for name in self.inputs:
            tensor = inputs[name]
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineError(f"{self.component}: TensorRT refused the shape {list(tensor.shape)} of input "
                                  f"'{name}'; rebuild the engine with '{self.rebuild}'")
            self._set_address(context, name, tensor)
        outputs = {}
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = aligned_empty(shape, self.dtypes[name], self.device)
            self._set_address(context, name, outputs[name])
        return outputs

    def _set_address(self, context, name: str, tensor: torch.Tensor) -> None:
        if not context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineError(f"{self.component}: TensorRT refused the address of '{name}' "
                              f"(0x{tensor.data_ptr():x}; it needs {TENSOR_ALIGNMENT}-byte alignment)")

    def _execute(self, context) -> None:
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f"{self.component}: TensorRT failed to run the engine (see its log with -v)")

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the engine: inputs any device/dtype, outputs float32 tensors on the runner's
        device, ready for the caller's stream (it waits on this backend's stream)."""
        engines.check_shapes(self.component, self.profile,
                             {n: tuple(inputs[n].shape) for n in self.inputs}, self.rebuild)
        caller = torch.cuda.current_stream()
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(caller)  # the inputs may still be being written on the caller's stream
            feeds = {n: aligned(inputs[n].to(self.device, self.dtypes[n])) for n in self.inputs}
            if self.use_cuda_graph:
                outputs = self._replay(feeds)
            else:
                outputs = self._bind(self.context, feeds)
                self._execute(self.context)
            outputs = {n: t.float() for n, t in outputs.items()}
        caller.wait_stream(self.stream)
        for t in outputs.values():
            if t.is_cuda:
                t.record_stream(caller)  # allocated on our stream, used and freed on the caller's
        return outputs

    def _replay(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy the inputs into the captured buffers and replay the CUDA graph of these input
        shapes; capture it on the first call with them, on an execution context of its own, after
        one ordinary run (TensorRT must have run once with a shape before capture). Graphs
        captured before the activation block grew are captured again."""
        if self._graphs_generation != self.block.generation:
            self._drop_graphs()  # captured with the addresses of a block since freed
        key = tuple(tuple(t.shape) for t in feeds.values())
        if key not in self._graphs:
            context = self._new_context()  # may grow the block: only for this engine's first context
            inputs = {n: aligned(t.clone()) for n, t in feeds.items()}
            outputs = self._bind(context, inputs)
            self._execute(context)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._execute(context)
            self._graphs[key] = (context, graph, inputs, outputs)
            self._graphs_generation = self.block.generation
        _, graph, inputs, outputs = self._graphs[key]
        for n, t in feeds.items():
            inputs[n].copy_(t)
        graph.replay()  # the captured launches carry their context's shapes and addresses
        return {n: t.clone() for n, t in outputs.items()}

    def _drop_graphs(self) -> None:
        for context, *_ in self._graphs.values():
            self.block.detach(context)
        self._graphs.clear()

    def release(self) -> None:
        """Detach this engine's contexts from the activation block and drop its CUDA graphs; the
        engine is freed when the last reference goes."""
        self._drop_graphs()
        if self.context is not None:
            self.block.detach(self.context)
            self.context = None


def stage_of(component: str) -> str:
    """The stage a component runs in: ``denoise`` for the UNet graphs (``unet_full`` and
    ``unet_shallow`` alternate every step under block caching), else the component itself."""
    return "denoise" if component in UNET_COMPONENTS else component


def deserialize(path, rebuild: str):
    """The engine at ``path``, deserialized with Polygraphy's ``EngineFromBytes``.

    Raises:
        EngineError: TensorRT could not deserialize it (a corrupt or foreign file; Polygraphy
            raises ``PolygraphyException`` there), with the command that rebuilds it.
    """
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.exception import PolygraphyException

    try:
        return EngineFromBytes(path.read_bytes())()
    except PolygraphyException as e:
        raise EngineError(f"TensorRT could not deserialize {path} ({first_line(e)}); rebuild it with "
                          f"'{rebuild}'") from None


class TensorRTBackend(Backend):
    """A bundle's TensorRT engines of one precision (built with ``svdtrt build``).

    Args:
        bundle: the opened :class:`svdtrt.bundle.store.Bundle`.
        precision: which engines (``fp32``, ``fp16``, ``int8``, ``fp8``).
        cuda_graph: replay the UNet graphs (``unet``, ``unet_full``, ``unet_shallow``) from CUDA
            graphs when their engines have static profiles.
        one_engine_at_a_time: keep only the engines of the stage in use loaded (for unified-memory
            devices such as Jetson): CLIP, the VAE encoder, the denoising loop's UNet engines
            (both block-caching engines together) and the decoder, each loaded once per clip.
    Raises:
        BackendUnavailableError: no TensorRT (10.3 or later), Polygraphy or CUDA GPU here (one
            line, with how to install them).
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
        self.block = ActivationBlock(self.stream, self.device)
        self.gpu = cuda_device()
        self._checked: dict[str, tuple] = {}
        self._runners: dict[str, EngineRunner] = {}

    def _runner(self, name: str) -> EngineRunner:
        if name not in self._runners:
            if self.one_engine_at_a_time:
                self._release([n for n in self._runners if stage_of(n) != stage_of(name)])
                if not self._runners:
                    self.block.free()  # the next stage's engines need only their own activations
            path, sidecar = self._checked[name]
            rebuild = engines.rebuild_command(self.bundle.path, name, self.precision, sidecar)
            # The engine's content is checked against the manifest once per file version
            # (Bundle.check_file): later loads pay a stat, not a hash of gigabytes.
            self.bundle.check_file(self.bundle.manifest.engines[f"{name}.{self.precision}"].engine)
            engine = deserialize(path, rebuild)
            self._runners[name] = EngineRunner(self.trt, engine, name, sidecar.profile_lists(), self.stream,
                                               self.block, self.device, rebuild,
                                               cuda_graph=self.cuda_graph and name in UNET_COMPONENTS)
            log.info("%s: loaded %s", name, path)
        return self._runners[name]

    def _release(self, names) -> None:
        if not names:
            return
        self.stream.synchronize()  # no engine is freed while its work is queued
        for name in names:
            self._runners.pop(name).release()
        torch.cuda.empty_cache()

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
        self._release(list(self._runners))
        self.block.free()
        torch.cuda.empty_cache()
