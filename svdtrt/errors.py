"""The one exception hierarchy of svdtrt.

The CLI turns every :class:`SvdtrtError` into a one-line message on stderr and exit
code 2; any other exception is a bug and keeps its traceback (see docs/architecture.md, "Errors").
Messages say what is wrong and what to do about it.
"""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (for one-line errors)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class SvdtrtError(Exception):
    """Base class of every error svdtrt raises on purpose."""


class InputError(SvdtrtError):
    """Bad user input: a missing image, an impossible shape, an unknown model, an existing output."""


class BundleError(SvdtrtError):
    """A bundle directory that is missing, incomplete, corrupt or from an incompatible version."""


class ExportError(SvdtrtError):
    """A component could not be exported to ONNX."""


class AccuracyError(SvdtrtError):
    """An exported or converted graph misses its tolerance against the PyTorch module.

    Attributes:
        component: component name, e.g. ``"unet"``.
        output: output tensor name, e.g. ``"noise_pred"``.
        metric: metric name, e.g. ``"max_abs_error"``.
        value: the measured value.
        limit: the tolerance it missed.
    """

    def __init__(self, component: str, output: str, metric: str, value: float, limit: float):
        self.component, self.output, self.metric, self.value, self.limit = component, output, metric, value, limit
        super().__init__(
            f"{component}: output '{output}' misses its tolerance: {metric} = {value:.3g} "
            f"(limit {limit:.3g}); the exported graph does not match PyTorch"
        )


class BackendUnavailableError(SvdtrtError):
    """A backend needs a package or a device this machine does not have."""


class EngineError(SvdtrtError):
    """A TensorRT engine is missing, stale or built for another graph, GPU or TensorRT version."""


class QuantizationError(SvdtrtError):
    """A calibration set or a quantized graph that cannot be used: a corrupt or mismatched shard,
    missing calibration data, or a Q/DQ graph that is not symmetric or has no Q/DQ node."""


class NumericalError(SvdtrtError):
    """A backend produced NaN or infinite values (a corrupted graph or engine, or an overflow)."""


class ClipCancelled(SvdtrtError):
    """Sampling stopped because whoever asked for the clip no longer waits for it (a served request
    that timed out or whose client went away): the loop checks before each denoising step."""
