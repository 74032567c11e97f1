"""The authors' steps in a process of their own, as their `main.py` runs them.

`benchmarks.throughput --torch_reference` starts this worker with the cached batches in
an `.npz` file and the step settings as JSON, then asks it for steps on its standard
input, one request a line (`<step> <count>`), and reads one JSON line per request: the
images and seconds of the steps, and the worker's CPU time and minor page faults over
them (`getrusage`). The worker imports PyTorch and NumPy, never TensorFlow: in a process
that had read the dataset through TensorFlow, the authors' steps ran 2x slower, half
their CPU time in the kernel zeroing pages faulted in again at every step (3,400 minor
faults per phase-0 image, against 5 in a process of their own), which their code does
not pay (docs/performance.md, "Against PyTorch").

    python -m benchmarks.pytorch.step_worker BATCHES.npz SETTINGS_JSON
"""

from __future__ import annotations

import json
import resource
import sys
import time


def serve(batches_path: str, settings: dict, requests=sys.stdin, replies=sys.stdout) -> None:
    import numpy as np

    from benchmarks import harness
    from benchmarks.pytorch import authors

    with np.load(batches_path) as batches:
        steps = authors.AuthorsSteps(
            batches["phase0_images"], batches["phase0_labels"], batches["phase1_images"],
            batches["phase1_labels"], batches["eval_images"], **settings)
    import torch

    print(json.dumps({"ready": True, "parameter_counts": steps.parameter_counts(),
                      "versions": {"torch": torch.__version__,
                                   "threads": torch.get_num_threads(),
                                   "interop_threads": torch.get_num_interop_threads()}}),
          file=replies, flush=True)
    for line in requests:
        step, count = line.split()
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        steps.run(step, int(count))
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"images": int(count) * steps.batch, "seconds": seconds,
                          **harness.usage_between(before, after)}),
              file=replies, flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m benchmarks.pytorch.step_worker BATCHES.npz SETTINGS_JSON "
                 f"(received {len(sys.argv) - 1} arguments)")
    serve(sys.argv[1], json.loads(sys.argv[2]))
