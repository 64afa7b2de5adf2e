"""CPU per compared shadow response: decode two v2 answers and add their parity figures.

    python -m tests.bench.bench_parity [--elements 1000] [--repeat 5000]

A 1 x N FP32 output, as JSON and as a binary tensor (Inference-Header-Content-Length),
compared in-process the way the router compares a mirrored answer with the primary's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

from router.parity import ParityRecorder


def json_answer(values: np.ndarray) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = orjson.dumps({"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, values.size],
                                                         "data": values.tolist()}]})
    return body, [(b"content-type", b"application/json")]


def binary_answer(values: np.ndarray) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    raw = values.astype("<f4").tobytes()
    header = orjson.dumps({"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, values.size],
                                                           "parameters": {"binary_data_size": len(raw)}}]})
    return header + raw, [(b"inference-header-content-length", str(len(header)).encode())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    primary = rng.random(args.elements, dtype=np.float32)
    shadow = (primary + rng.normal(0, 1e-3, args.elements)).astype(np.float32)
    for name, encode in (("json", json_answer), ("binary", binary_answer)):
        a, b = encode(primary), encode(shadow)
        recorder = ParityRecorder()
        key = ("m", "4", "3", "sm_80", "sm_80")
        rounds = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(args.repeat):
                recorder.compare(key, a, b)
            rounds.append((time.process_time() - started) / args.repeat * 1e6)
        print(f"{name:6s} 1x{args.elements} FP32: {statistics.median(rounds):.1f} µs CPU per compared response "
              f"(min {min(rounds):.1f}, max {max(rounds):.1f}; body {len(a[0])} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
