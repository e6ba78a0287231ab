"""One UNet call of a bundle on ONNX Runtime's CPU provider under session-option variants,
next to the PyTorch module at 1 and 2 threads, interleaved so that a shared machine's load
falls on every variant alike (used for the ONNX Runtime findings in docs/benchmarks.md).

    python benchmarks/ort_session_options.py BUNDLE [--repeat N]
"""

import argparse
import statistics
import time
import warnings

import onnxruntime as ort
import torch

from svdtrt.bundle.store import Bundle
from svdtrt.models.modules import example_inputs, torch_modules
from svdtrt.runtime.backends import reference_model
from svdtrt.specs import COMPONENTS


def ort_session(path, feeds, threads=None, spinning=True, level=None, arena=True):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if level is not None:
        options.graph_optimization_level = level
    options.enable_cpu_mem_arena = arena
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def torch_call(module, inputs, threads):
    def run():
        torch.set_num_threads(threads)
        with torch.no_grad():
            module(*inputs.values())
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", help="run only the variants whose name contains this text, e.g. 'threads=1' "
                                       "(an ONNX Runtime pool's spinning threads slow whatever runs next)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    bundle = Bundle.open(args.bundle)
    model = reference_model(bundle)
    frames, height, width = bundle.default_shape
    spec = COMPONENTS["unet"]
    inputs = example_inputs(spec, model.dims.sizes(spec.batch[1], frames, height, width))
    feeds = {k: v.numpy() for k, v in inputs.items()}
    path, unet = bundle.graph_path("unet"), torch_modules(model)["unet"]
    basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    variants = {
        "onnxruntime default": ort_session(path, feeds),
        "onnxruntime threads=2": ort_session(path, feeds, threads=2),
        "onnxruntime threads=1": ort_session(path, feeds, threads=1),
        "onnxruntime threads=2 no spinning": ort_session(path, feeds, threads=2, spinning=False),
        "onnxruntime basic graph opt": ort_session(path, feeds, level=basic),
        "onnxruntime no memory arena": ort_session(path, feeds, arena=False),
        "torch threads=2": torch_call(unet, inputs, 2),
        "torch threads=1": torch_call(unet, inputs, 1),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if args.only in k}
    seconds = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm-up
    for _ in range(args.repeat):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    print(f"UNet call, {bundle.manifest['source']['name']}, sample {list(inputs['sample'].shape)}, "
          f"{args.repeat} interleaved calls each:")
    print("| variant | median ms | min ms |\n|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.1f} | {min(values) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
