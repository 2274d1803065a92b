"""Training input pipeline speed: vgg_flax.data against torchvision, in one run.

    .venv/bin/python benchmarks/input_pipeline.py [--images 256] [--workers N] [--batch 32]

Writes ImageNet-like JPEGs (about 500x375, quality 90) into a temporary image folder and times
the same training transform on both sides: smaller side to 256, random 224 crop, random flip,
torchvision's mean/std normalisation (PCA lighting off: torchvision has no equivalent). Ours is
tf.data with fused decode-and-crop and N threads; torchvision's is PIL + transforms + DataLoader
with N worker processes. Prints images/s for each and the ratio (target: >= 1).
"""

# torch and torchvision must be imported before TensorFlow (docs/environment.md); the
# DataLoader also runs before TensorFlow is loaded so its worker processes fork a TF-free parent.
import torch  # isort: skip
import torchvision  # isort: skip

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image
from torchvision import transforms

SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 500))


def write_images(root: str, count: int, classes: int = 4) -> None:
    """JPEGs with photo-like content (smooth colour plus noise) in root/train/<class>/."""
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        folder = os.path.join(root, "train", f"c{i % classes}")
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def rate(batches, batch_size: int, warmup: int, timed: int, wait=lambda b: None) -> float:
    """Images per second over `timed` batches after `warmup` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        wait(next(iterator))
    start = time.perf_counter()
    for _ in range(timed):
        wait(next(iterator))
    return timed * batch_size / (time.perf_counter() - start)


def endless(loader):
    while True:
        yield from loader


def torchvision_rate(root: str, args) -> float:
    """PIL + torchvision transforms + DataLoader with `workers` processes."""
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.RandomCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    return rate(endless(loader), args.batch, args.warmup, args.timed)


def ours_rate(root: str, args, **overrides) -> float:
    """vgg_flax.data.train_iterator on the same folder, `workers` tf.data threads."""
    from vgg_flax import data, parallel

    options = data.default_config(source="folder", folder=root, threads=args.workers, **overrides)
    iterator = data.train_iterator(
        options, global_batch_size=args.batch, seed=0, mesh=parallel.make_mesh()
    )
    return rate(
        iterator, args.batch, args.warmup, args.timed, lambda b: b["image"].block_until_ready()
    )


def main() -> None:
    """Time both pipelines and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs written")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="both sides")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing")
    parser.add_argument("--timed", type=int, default=16, help="batches timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_images(root, args.images)
        theirs = torchvision_rate(root, args)
        ours = ours_rate(root, args, pca_lighting=0.0, normalize="torchvision")
        paper = ours_rate(root, args, scale_range=(256, 512))  # + PCA lighting, mean RGB
    print(f"images ~500x375 JPEG, batch {args.batch}, {args.workers} workers/threads")
    print(f"torchvision (PIL + DataLoader):  {theirs:8.1f} images/s")
    print(f"vgg_flax.data (tf.data):         {ours:8.1f} images/s")
    print(f"ratio ours / torchvision:        {ours / theirs:8.2f}")
    print(f"vgg_flax.data, S in [256, 512] + PCA lighting: {paper:8.1f} images/s")


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
