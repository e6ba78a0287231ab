"""Throughput of ``svdtrt serve`` with 1 and 2 replicas, and the latency the service adds over the
same clip made directly (docs/serving.md).

    PYTHONPATH=$PWD python benchmarks/serving.py BUNDLE [--replicas 1,2] [--clips 12] [--steps 10] \
        [--rounds 5] [--json out.json]

On an embedded local Ray with all of this machine's CPUs:

- throughput: for each replica count R, the application with R replicas of CPUs/R CPUs each (and as
  many ONNX Runtime threads); one warm-up clip per replica, then ``--clips`` requests (mp4) sent
  with R + 1 in flight (so no replica waits for the client), timed from the first send to the last
  answer: clips per minute;
- overhead (with 1 replica): ``--rounds`` alternating pairs of (a) the clip made directly in this
  process, with the same backend, thread count and encoding as a replica
  (:class:`svdtrt.serving.worker.ClipMaker` + :func:`encode_clip`: ``svdtrt run`` with its process
  start, imports and session loads taken out), and (b) the same clip as a request, timed at the
  client. Reported: medians of both and their difference; and, free of the drift between two clips
  on a loaded machine, the part of each request around the replica's pipeline (client time minus
  the Server-Timing ``total``: HTTP, the form, decoding the image, Ray's hops between proxy, ingress
  and replica, the image and clip through Ray's object store, the mp4 encoding) less the encoding
  (which ``run`` does too): what the service adds, also as a share of the direct clip. A cold
  ``svdtrt run`` of the same clip is timed once for reference.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, image: bytes, seed: int, steps: int) -> float:
    return _request(url, image, seed, steps)[0]


def _request(url: str, image: bytes, seed: int, steps: int) -> tuple[float, float]:
    """(seconds at the client, the replica's pipeline ``total`` from Server-Timing)."""
    start = time.perf_counter()
    r = requests.post(f"{url}/v1/clips", files={"image": ("photo.png", image)},
                      data={"seed": str(seed), "steps": str(steps)}, timeout=3600)
    r.raise_for_status()
    seconds = time.perf_counter() - start
    timings = dict(t.strip().split(";dur=") for t in r.headers["Server-Timing"].split(","))
    return seconds, float(timings["total"]) / 1000


def _deploy(bundle: str, replicas: int, cpus: float, port: int) -> str:
    from ray import serve

    from svdtrt.serving.app import ServeOptions, build_app
    from svdtrt.serving.worker import WorkerOptions

    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 3600})
    serve.run(build_app(ServeOptions(WorkerOptions(bundle, cpus=cpus), replicas=replicas, max_queued=64)),
              name="svdtrt")
    return f"http://127.0.0.1:{port}"


def throughput(bundle: str, image: bytes, replicas: int, clips: int, steps: int, port: int) -> dict:
    from ray import serve

    cpus = os.cpu_count() / replicas
    cpus = float(int(cpus)) if cpus >= 1 else cpus
    url = _deploy(bundle, replicas, cpus, port)
    with ThreadPoolExecutor(replicas) as pool:  # warm-up: one clip per replica
        list(pool.map(lambda s: _post(url, image, s, steps), range(replicas)))
    start = time.perf_counter()
    with ThreadPoolExecutor(replicas + 1) as pool:
        latencies = list(pool.map(lambda s: _post(url, image, s, steps), range(clips)))
    seconds = time.perf_counter() - start
    serve.delete("svdtrt")
    return {"replicas": replicas, "cpus_per_replica": cpus, "clips": clips, "seconds": round(seconds, 2),
            "clips_per_minute": round(60 * clips / seconds, 2),
            "median_latency_s": round(statistics.median(latencies), 3)}


def overhead(bundle: str, image_path: Path, image: bytes, rounds: int, steps: int, port: int) -> dict:
    from ray import serve

    from svdtrt.bundle.store import Bundle
    from svdtrt.media.images import load_image
    from svdtrt.runtime.pipeline import SamplingSettings
    from svdtrt.serving.worker import ClipMaker, WorkerOptions, encode_clip

    cpus = float(os.cpu_count())
    frames, height, width = Bundle.open(bundle).default_shape
    settings = SamplingSettings(frames=frames, height=height, width=width, steps=steps, seed=0)
    maker = ClipMaker(WorkerOptions(bundle, cpus=cpus))
    picture = load_image(image_path)

    def direct() -> tuple[float, float]:
        """(seconds of the clip made and encoded, seconds of the encoding alone)."""
        start = time.perf_counter()
        frames = maker.make(picture, settings).frames
        encoding = time.perf_counter()
        encode_clip(frames, "mp4", settings.fps)
        end = time.perf_counter()
        return end - start, end - encoding

    url = _deploy(bundle, 1, cpus, port)
    direct(), _post(url, image, 0, steps)  # warm-up of both
    pairs = [(direct(), _request(url, image, 0, steps)) for _ in range(rounds)]
    serve.delete("svdtrt")
    d, s = statistics.median(p[0][0] for p in pairs), statistics.median(p[1][0] for p in pairs)
    # Within each request: the client's time minus the replica's pipeline time is what surrounds the
    # sampling (HTTP, the form, the image's decoding, Ray's hops, the mp4 encoding), free of the
    # drifts between two clips; minus the encoding that 'run' does too, it is what the service adds.
    around = statistics.median(p[1][0] - p[1][1] for p in pairs)
    encoding = statistics.median(p[0][1] for p in pairs)
    with tempfile.TemporaryDirectory() as folder:  # the command a user would run, cold
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "svdtrt", "run", bundle, "--image", str(image_path), "--out",
                        f"{folder}/clip.mp4", "--steps", str(steps), "--seed", "0"], check=True, capture_output=True)
        cold = time.perf_counter() - start
    return {"rounds": rounds, "direct_s": round(d, 3), "service_s": round(s, 3),
            "paired_difference_s": round(s - d, 3), "paired_difference_share": round((s - d) / d, 4),
            "around_pipeline_in_request_s": round(around, 3), "encoding_s": round(encoding, 3),
            "added_s": round(around - encoding, 3), "added_share": round((around - encoding) / d, 4),
            "pairs": [[round(a[0], 3), round(b[0], 3), round(b[1], 3)] for a, b in pairs],
            "cold_svdtrt_run_s": round(cold, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from svdtrt.media.images import sample_image

    photo = sample_image("astronaut")
    folder = tempfile.mkdtemp()
    image_path = Path(folder) / "photo.png"
    photo.save(image_path)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    image = buffer.getvalue()

    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    port = _free_port()
    load = [round(x, 2) for x in os.getloadavg()]
    results = {"bundle": args.bundle, "steps": args.steps, "cpus": os.cpu_count(), "load_at_start": load,
               "throughput": [throughput(args.bundle, image, int(r), args.clips, args.steps, port)
                              for r in args.replicas.split(",")]}
    for row in results["throughput"]:
        print(json.dumps(row), flush=True)
    if args.rounds:
        results["overhead"] = overhead(args.bundle, image_path, image, args.rounds, args.steps, port)
        print(json.dumps(results["overhead"]), flush=True)
    results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average {load} at start, {results['load_at_end']} at end")
    ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
