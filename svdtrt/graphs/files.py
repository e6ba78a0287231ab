"""Graphs over 2 GB: weights stream, tensor by tensor, into one external-data file per graph.

A protobuf message cannot exceed 2 GB, so a graph is only ever handled as its weightless
structure (``onnx.load(path, load_external_data=False)``) plus a data file read and written
one tensor at a time. Memory beyond the graph structure is one tensor (the UNet's largest is
26 MB), never a second copy of the weights. Checking and shape inference go through the file
path (:func:`check_graph_file`), which onnx supports for graphs of any size.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto
from onnx.external_data_helper import ExternalDataInfo

from ..errors import ExportError, first_line

log = logging.getLogger(__name__)

#: Tensors smaller than this stay inside the graph (onnx's own default threshold), so that
#: graph tools can read shape constants and small biases without opening the data file.
EMBED_BELOW_BYTES = 1024
#: Tensor offsets in the data file are multiples of this, so ONNX Runtime can memory-map them.
ALIGNMENT = 4096

#: Re-encodes one tensor's bytes (e.g. float32 -> float16); gets (tensor, array), returns the array.
Transform = Callable[[TensorProto, np.ndarray], np.ndarray]


def data_filename(graph_path: Path) -> str:
    """Name of a graph's external-data file: the graph's file name plus ``.data`` (also what ONNX
    Runtime's quantizer writes beside its graphs)."""
    return Path(graph_path).name + ".data"


def data_path(graph_path: Path) -> Path:
    """Path of a graph's external-data file, beside the graph (:func:`data_filename`)."""
    return Path(graph_path).with_name(data_filename(graph_path))


def read_tensor_array(tensor: TensorProto, base_dir: Path, original_type: int | None = None) -> np.ndarray:
    """The values of ``tensor`` as a numpy array, reading external data from ``base_dir``
    without loading anything else. ``original_type`` overrides the element type (for a tensor
    whose declared type was changed before its bytes were re-encoded)."""
    data_type = original_type or tensor.data_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    if tensor.data_location == TensorProto.EXTERNAL:
        info = ExternalDataInfo(tensor)
        with open(base_dir / info.location, "rb") as f:
            f.seek(info.offset or 0)
            raw = f.read(info.length) if info.length else f.read()
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.dims))
    if original_type:
        tensor = TensorProto.FromString(tensor.SerializeToString())
        tensor.data_type = original_type
    return onnx.numpy_helper.to_array(tensor)


def save_graph(model: onnx.ModelProto, source_dir: Path, path: Path,
               transforms: dict[str, Transform] | None = None,
               original_types: dict[str, int] | None = None) -> int:
    """Write ``model`` to ``path`` with all its large initializers in one ``path.data`` file.

    ``model`` may hold its weights inline, or as external data relative to ``source_dir``
    (such as ``torch.onnx.export``'s one-file-per-tensor output for graphs over 2 GB, or an
    earlier bundle's graph); each tensor is read, optionally re-encoded by ``transforms[name]``,
    appended to the data file and dropped from memory before the next one.

    Args:
        model: the graph; modified in place (initializers become external references).
        source_dir: directory that ``model``'s external-data locations are relative to.
        path: the ``.onnx`` file to write.
        transforms: per-initializer re-encoding (e.g. float32 -> float16).
        original_types: per-initializer element type of the bytes on disk, where the graph
            already declares the new one.
    Returns:
        Bytes written to the data file.
    Raises:
        ExportError: the disk filled up (ENOSPC) or another write error; partial files are removed.
    """
    transforms, original_types = transforms or {}, original_types or {}
    data = data_path(path)
    written = 0
    try:
        for stale in (path, data):  # never write through a hard link into another bundle
            stale.unlink(missing_ok=True)
        with open(data, "wb") as out:
            for tensor in _all_initializers(model.graph):
                array = None
                if tensor.name in transforms or tensor.data_location == TensorProto.EXTERNAL:
                    array = read_tensor_array(tensor, source_dir, original_types.get(tensor.name))
                    if tensor.name in transforms:
                        array = transforms[tensor.name](tensor, array)
                    raw = np.ascontiguousarray(array).tobytes()
                else:
                    raw = tensor.raw_data or onnx.numpy_helper.to_array(tensor).tobytes()
                if len(raw) < EMBED_BELOW_BYTES:
                    if array is not None or tensor.data_location == TensorProto.EXTERNAL:
                        _embed(tensor, raw)
                    continue
                offset = -written % ALIGNMENT
                out.write(b"\0" * offset)
                written += offset
                out.write(raw)
                _reference(tensor, data.name, written, len(raw))
                written += len(raw)
                del raw, array
        onnx.save_model(model, str(path))
    except OSError as e:
        path.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise ExportError(f"the disk filled up while writing {path.name} ({written / 2**30:.2f} GiB written); "
                              f"free space in '{path.parent}' and export again") from None
        raise ExportError(f"cannot write {path}: {e}") from None
    log.info("wrote %s with %.1f MiB of external data", path.name, written / 2**20)
    return written


def _all_initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) else ():
                yield from _all_initializers(sub)


def _embed(tensor: TensorProto, raw: bytes) -> None:
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT
    tensor.ClearField("float_data")
    tensor.ClearField("int32_data")
    tensor.ClearField("int64_data")
    tensor.raw_data = raw


def _reference(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "raw_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    tensor.data_location = TensorProto.EXTERNAL


def check_graph_file(path: Path) -> None:
    """onnx's checker on the file (works for graphs over 2 GB, where an in-memory check cannot).

    Raises:
        ExportError: the graph is not valid ONNX.
    """
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{Path(path).name} is not valid ONNX: {first_line(e)}") from None


def infer_shapes_file(path: Path, out: Path) -> None:
    """onnx's shape inference from file to file (``infer_shapes_path``: no 2 GB limit)."""
    onnx.shape_inference.infer_shapes_path(str(path), str(out))


def graph_bytes(path: Path) -> int:
    """Size of a graph on disk: the ``.onnx`` file plus its data file, in bytes."""
    data = data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)



def share_external_data(path: Path, owner: Path) -> bool:
    """Point the graph at ``path`` at the weights file of the graph at ``owner``, where it can.

    The block-caching graphs hold copies of the UNet's weights (docs/architecture.md, "Block
    caching"): when every tensor of ``path``'s data file has a byte-identical tensor in
    ``owner``'s data file, ``path``'s initializers are rewritten to read the owner's file at those
    offsets and its own data file is deleted, so the bundle keeps one copy of the weights and each
    graph still names exactly one external-data file. Otherwise nothing changes. ``owner`` may be
    in another folder (a bundle's kept file while a transaction stages ``path``): the reference is
    by file name, for the two to sit side by side once published.

    Returns:
        True when the graph now reads the owner's data file.
    """
    import hashlib

    path, owner = Path(path), Path(owner)
    own_data, owner_data = data_path(path), data_path(owner)
    if not own_data.exists() or not owner_data.exists():
        return False

    def external(model, base: Path):
        for tensor in _all_initializers(model.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                info = ExternalDataInfo(tensor)
                raw = read_tensor_array(tensor, base).tobytes()
                yield tensor, info, hashlib.sha256(raw).hexdigest(), len(raw)

    owner_model = onnx.load(str(owner), load_external_data=False)
    index = {(t.data_type, tuple(t.dims), digest): (info.offset or 0, length)
             for t, info, digest, length in external(owner_model, owner.parent)}
    del owner_model
    model = onnx.load(str(path), load_external_data=False)
    matches = []
    for tensor, _, digest, _ in external(model, path.parent):
        found = index.get((tensor.data_type, tuple(tensor.dims), digest))
        if found is None:
            log.info("%s: tensor %s has no copy in %s; the graph keeps its own weights file", path.name,
                     tensor.name, owner_data.name)
            return False
        matches.append((tensor, found))
    for tensor, (offset, length) in matches:
        _reference(tensor, owner_data.name, offset, length)
    # No onnx check after the rewrite: the graph was checked with its own weights, only the
    # locations changed, each to a tensor just matched byte for byte, and the owner's file may not
    # sit beside ``path`` before the transaction publishes (the checker resolves files on disk).
    path.unlink()  # never write through a hard link
    onnx.save_model(model, str(path))
    own_data.unlink()
    log.info("%s: %d tensors read from %s", path.name, len(matches), owner_data.name)
    return True
