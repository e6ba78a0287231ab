"""Stand-ins for what cannot exist on a machine without a GPU: TensorRT's module, its engines and
execution contexts, and CUDA's streams and graphs (``torch.cuda``). Everything else the tests
drive is real: Polygraphy's ``EngineFromBytes`` (given this ``tensorrt`` module), svdtrt's
backend, the bundle, its engines' sidecars and the sampling loop.

Each stand-in enforces the rule of the real object that the backend must follow, citing it, so a
test fails where the backend breaks one:

- ``set_tensor_address`` returns False for an address that is not 256-byte aligned
  (``IExecutionContext::setTensorAddress``, ``NvInferRuntime.h`` of TensorRT 10.3 and 11.1);
- ``set_input_shape`` returns False for a shape outside the engine's profile;
- a context created ``USER_MANAGED`` runs only once it has device memory of the engine's size
  (``setDeviceMemoryV2``);
- a CUDA graph replays the launches it captured with the state its context had then; replaying it
  after that context's shapes, addresses or memory changed fails (TensorRT developer guide, "CUDA
  Graphs": a graph is specific to the context state it was captured from).

Host memory stands in for device memory: the backend's device is set to the CPU, and the stand-in
context reads its inputs from, and writes its outputs to, the addresses it was given (ctypes), so
a wrong address gives wrong numbers. Each output is filled with the sum of all inputs (plus the
output's index), which depends on every input value.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import types

import numpy as np
import torch

from svdtrt.specs import COMPONENTS, output_shapes

#: ``IExecutionContext::setTensorAddress``: "The pointer must have at least 256-byte alignment."
ALIGNMENT = 256


class Log:
    """What happened, in order: ``("wait", waiter, waited)``, ``("sync", stream)``, ``("run", component)``,
    ``("load", component)``, ``("replay", component)``."""

    def __init__(self):
        self.events: list[tuple] = []
        self.capturing = None  # the StandInGraph being captured

    def count(self, kind: str, what=None) -> int:
        return sum(1 for e in self.events if e[0] == kind and (what is None or e[1] == what))


class StandInStream:
    """``torch.cuda.Stream``: a handle, and the waits and synchronisations it is asked for."""

    def __init__(self, log: Log, handle: int):
        self.log, self.cuda_stream = log, handle

    def wait_stream(self, other) -> None:
        self.log.events.append(("wait", self.cuda_stream, other.cuda_stream))

    def synchronize(self) -> None:
        self.log.events.append(("sync", self.cuda_stream))


class StandInGraph:
    """``torch.cuda.CUDAGraph``: replays the launches captured in it."""

    def __init__(self, log: Log):
        self.log, self.launches = log, []

    def replay(self) -> None:
        for context, state in self.launches:
            if context.state != state:
                raise AssertionError(f"{context.engine.component}: a CUDA graph was replayed after the state of the "
                                     "execution context it was captured from changed (undefined in TensorRT)")
            self.log.events.append(("replay", context.engine.component))
            context.run()


def install_cuda(monkeypatch, log: Log) -> None:
    """Replace ``torch.cuda``'s streams and graphs with the stand-ins above (``current_stream`` is
    the default stream, handle 0)."""
    handles = iter(range(0x1000, 0x100000, 0x10))
    default = StandInStream(log, 0)

    @contextlib.contextmanager
    def capture(graph, stream=None, **_):
        log.capturing = graph
        try:
            yield
        finally:
            log.capturing = None

    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: StandInStream(log, next(handles)))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: default)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: StandInGraph(log))
    monkeypatch.setattr(torch.cuda, "graph", capture)


def _memory(address: int, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array at ``address`` (host memory standing in for the device's)."""
    count = int(np.prod(shape, dtype=np.int64))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


class StandInContext:
    """``IExecutionContext``: shapes and addresses by name, its device memory, and a state that
    changes with any of them (what a captured CUDA graph depends on)."""

    def __init__(self, engine, strategy):
        self.engine, self.strategy = engine, strategy
        self.shapes, self.addresses, self.device_memory = {}, {}, None
        self.state = 0
        self.refused: list[tuple[str, int]] = []
        self.inputs_seen: list[dict[str, np.ndarray]] = []

    def set_input_shape(self, name: str, shape) -> bool:
        p = self.engine.profile[name]
        if len(shape) != len(p["min"]) or any(not a <= s <= b for s, a, b in zip(shape, p["min"], p["max"])):
            return False
        self.shapes[name], self.state = tuple(shape), self.state + 1
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if address % ALIGNMENT:
            self.refused.append((name, address))
            return False
        self.addresses[name], self.state = address, self.state + 1
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return output_shapes(COMPONENTS[self.engine.component], self.engine.dims, self.shapes)[name]

    def set_device_memory(self, address: int, size: int) -> None:
        assert self.strategy == TensorRT.ExecutionContextAllocationStrategy.USER_MANAGED, \
            "set_device_memory on a context that allocated its own memory"
        self.device_memory, self.state = (address, size), self.state + 1

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.engine.log.capturing is not None:
            self.engine.log.capturing.launches.append((self, self.state))
            return True
        self.run()
        return True

    def run(self) -> None:
        engine = self.engine
        if self.strategy == TensorRT.ExecutionContextAllocationStrategy.USER_MANAGED:
            assert self.device_memory and self.device_memory[1] >= engine.device_memory_size_v2, \
                f"{engine.component}: run without device memory of the engine's size"
        unbound = [n for n in (*engine.input_names, *engine.output_names) if n not in self.addresses]
        assert not unbound, f"{engine.component}: run with no address for {unbound} (refused by set_tensor_address)"
        engine.log.events.append(("run", engine.component))
        inputs = {n: _memory(self.addresses[n], self.shapes[n]).copy() for n in engine.input_names}
        self.inputs_seen.append(inputs)
        total = float(sum(v.sum(dtype=np.float64) for v in inputs.values()))
        for i, name in enumerate(engine.output_names):
            _memory(self.addresses[name], self.get_tensor_shape(name))[...] = total + i


class StandInEngine:
    """``ICudaEngine`` of one component: float32 I/O named as its spec, one optimization profile."""

    def __init__(self, log: Log, component: str, dims, profile: dict, device_memory: int):
        spec = COMPONENTS[component]
        self.log, self.component, self.dims, self.profile = log, component, dims, profile
        self.input_names, self.output_names = spec.input_names, spec.output_names
        self.num_io_tensors = len(self.input_names) + len(self.output_names)
        self.device_memory_size_v2 = device_memory
        self.contexts: list[StandInContext] = []

    def get_tensor_name(self, index: int) -> str:
        return [*self.input_names, *self.output_names][index]

    def get_tensor_mode(self, name: str):
        return TensorRT.TensorIOMode.INPUT if name in self.input_names else TensorRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return TensorRT.float32

    def create_execution_context(self, strategy=None):
        context = StandInContext(self, strategy or TensorRT.ExecutionContextAllocationStrategy.STATIC)
        self.contexts.append(context)
        return context


def engine_bytes(component: str, profile: dict, device_memory: int) -> bytes:
    """What :class:`StandInRuntime` deserializes: the component, its optimization profile and its
    activation size."""
    return json.dumps({"component": component, "profile": profile, "device_memory": device_memory}).encode()


class StandInRuntime:
    """``trt.Runtime``: deserializes :func:`engine_bytes`, and returns None for anything else, as
    TensorRT does for a corrupt or foreign plan."""

    def __init__(self, log: Log, dims):
        self.log, self.dims = log, dims

    def deserialize_cuda_engine(self, buffer):
        try:
            data = json.loads(bytes(buffer))
        except ValueError:
            return None
        self.log.events.append(("load", data["component"]))
        return StandInEngine(self.log, data["component"], self.dims, data["profile"], data["device_memory"])


TensorRT = types.SimpleNamespace(
    __version__="10.3.0",
    TensorIOMode=types.SimpleNamespace(INPUT="input", OUTPUT="output"),
    ExecutionContextAllocationStrategy=types.SimpleNamespace(STATIC="static", ON_PROFILE_CHANGE="on_profile_change",
                                                             USER_MANAGED="user_managed"),
    float32="float32", float16="float16", int32="int32", int64="int64", int8="int8", bool="bool",
    init_libnvinfer_plugins=lambda logger, namespace: True,
)
#: The GPU the stand-in engines are built and run on.
GPU = {"name": "NVIDIA L4", "compute_capability": "8.9", "memory_bytes": 24 * 2**30}


def install(monkeypatch, dims) -> Log:
    """Install the stand-ins for CUDA (:func:`install_cuda`) and ``tensorrt``, for Polygraphy's
    loaders and svdtrt's backend (which imports it through
    :func:`svdtrt.environment.require_tensorrt`), on the stand-in GPU, for engines of a model of
    ``dims``; returns the log they share. Polygraphy's logger is given a placeholder, so that no
    stand-in ends up in its global state."""
    import polygraphy.backend.trt.util as trt_util
    from polygraphy.backend.trt import loader

    import svdtrt.runtime.backends.trt as backend_module

    log = Log()
    install_cuda(monkeypatch, log)
    trt = types.SimpleNamespace(**vars(TensorRT), Runtime=lambda logger: StandInRuntime(log, dims))
    monkeypatch.setattr(loader, "trt", trt)
    monkeypatch.setattr(trt_util, "TRT_LOGGER", object())
    monkeypatch.setattr(backend_module, "require_tensorrt", lambda purpose="": trt)
    monkeypatch.setattr(backend_module, "cuda_device", lambda index=0: GPU)
    return log


def standin_backend(bundle, precision: str = "fp32", **options):
    """The real :class:`svdtrt.runtime.backends.trt.TensorRTBackend` on the stand-ins (after
    :func:`install`), with host memory standing in for the GPU's."""
    from svdtrt.runtime.backends.trt import TensorRTBackend

    backend = TensorRTBackend(bundle, precision, **options)
    backend.device = backend.block.device = torch.device("cpu")
    return backend


def build_standin_engines(monkeypatch, bundle_path, precision: str = "fp32", device_memory=None, **plan_options):
    """Engines for the bundle's components built by ``build_engines`` (the real build stage: plan,
    sidecars, manifest, transaction) with TensorRT's builder replaced by :func:`engine_bytes`;
    ``device_memory``: ``{component: activation bytes}`` (default 4096 each). Returns the build's
    results."""
    import svdtrt.environment
    from svdtrt.build import builder
    from svdtrt.build.plan import plan_build
    from svdtrt.bundle.store import Bundle

    sizes = device_memory or {}
    monkeypatch.setattr(svdtrt.environment, "require_tensorrt", lambda purpose="": TensorRT)
    monkeypatch.setattr(svdtrt.environment, "cuda_device", lambda index=0: GPU)
    monkeypatch.setattr(builder, "_build_serialized", lambda trt, graph, profile, flags: engine_bytes(
        graph.name.split(".")[0], profile, sizes.get(graph.name.split(".")[0], 4096)))
    plan = plan_build(Bundle.open(bundle_path), precision, **plan_options)
    return builder.build_engines(bundle_path, plan, progress=False)
