"""What a sweep ships through Ray's object store: a data set's bytes as float32 (before) and as stored (after).

8-bit sources are kept uint8 and made float per batch on the trial's device, a quarter of the bytes.
The torchvision sets and Tiny ImageNet are computed from their official shapes (nothing downloaded);
digits and a CIFAR-shaped sample are measured: `ray.put` of the prepared `Dataset`, size as Ray reports it.

    python benchmarks/object_store.py               # ~20 s (starts a one-CPU Ray)
    python benchmarks/object_store.py --smoke-test  # the same (it is small already)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

# (train, test, C, H, W) of the official splits
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "mnist": (60000, 10000, 1, 28, 28),
    "fashion_mnist": (60000, 10000, 1, 28, 28),
    "kmnist": (60000, 10000, 1, 28, 28),
    "cifar10": (50000, 10000, 3, 32, 32),
    "cifar100": (50000, 10000, 3, 32, 32),
    "svhn": (73257, 26032, 3, 32, 32),
    "tiny_imagenet": (100000, 10000, 3, 64, 64),
}
LABEL_BYTES = 8  # int64 labels, the same before and after


def computed(train: int, test: int, c: int, h: int, w: int) -> tuple[int, int]:
    """(float32 bytes, uint8 bytes) of images and labels of both splits."""
    n = train + test
    return n * c * h * w * 4 + n * LABEL_BYTES, n * c * h * w + n * LABEL_BYTES


def measured(dataset: object) -> int:
    """Bytes of `dataset` in the object store, as Ray reports them after `ray.put`."""
    import ray
    from ray.experimental import get_object_locations

    ref = ray.put(dataset)
    size = int(get_object_locations([ref])[ref]["object_size"])
    del ref
    return size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="accepted for run_all; the benchmark is small")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    import ray

    from pclc.data import Dataset, load_stored

    rows = []
    for name, shape in SHAPES.items():
        before, after = computed(*shape)
        rows.append({"dataset": name, "before": before, "after": after, "how": "computed from shapes"})
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        digits = load_stored("digits")  # float32 at the source (values k/16): nothing to gain
        rows.append(
            {
                "dataset": "digits",
                "before": measured(digits.as_float()),
                "after": measured(digits),
                "how": "measured (ray.put)",
            }
        )
        g = torch.Generator().manual_seed(0)
        n_train, n_test = 2000, 500

        def images(n: int) -> torch.Tensor:
            return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)

        sample = Dataset(
            "cifar10-shaped sample",
            images(n_train),
            torch.randint(0, 10, (n_train,), generator=g),
            images(n_test),
            torch.randint(0, 10, (n_test,), generator=g),
            num_classes=10,
        )
        before, after = measured(sample.as_float()), measured(sample)
        rows.append(
            {
                "dataset": f"cifar10-shaped, {n_train}+{n_test}",
                "before": before,
                "after": after,
                "how": "measured (ray.put)",
                "computed": list(computed(n_train, n_test, 3, 32, 32)),
            }
        )
    finally:
        ray.shutdown()

    print("object-store bytes per dataset: float32 (before) vs as stored (after)")
    print(f"| {'dataset':<26} | {'float32 MB':>10} | {'stored MB':>9} | ratio | {'how':<20} |")
    print(f"| {'-' * 26} | {'-' * 10} | {'-' * 9} | ----- | {'-' * 20} |")
    for r in rows:
        print(
            f"| {r['dataset']:<26} | {r['before'] / 1e6:10.1f} | {r['after'] / 1e6:9.1f} | "
            f"{r['after'] / r['before']:5.2f} | {r['how']:<20} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
