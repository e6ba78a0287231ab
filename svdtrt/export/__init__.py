"""Export: an SVD model to a bundle of validated ONNX graphs (:func:`export_bundle`), and fp16
graphs converted from a bundle's fp32 graphs (:func:`convert_bundle`)."""

from .bundle_export import PRECISIONS, export_bundle
from .convert import convert_bundle

__all__ = ["PRECISIONS", "convert_bundle", "export_bundle"]
