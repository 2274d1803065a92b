r"""Mean RGB and PCA colour eigen-pairs of a dataset's training split, for the data options.

    .venv/bin/python experiments/dataset_stats.py --source digits
    .venv/bin/python experiments/dataset_stats.py --source imagenet2012 --data-dir ~/tfds \
        --max-images 50000 --scale 256

Prints JSON whose keys are data options (mean_rgb, pca_eigval, pca_eigvec). For ImageNet the
paper's numbers are in vgg_flax/preprocessing.py (IMAGENET_MEAN_RGB, IMAGENET_PCA_*).
"""

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a file: find the repository's packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_flax.cli import HelpFormatter, entry_point  # noqa: E402


@entry_point("dataset_stats")
def main(argv: list[str] | None = None) -> int:
    """Parse flags, compute the statistics, print them as JSON (errors: one line, exit 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.dataset_stats",
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--source", default="digits", help="digits, folder, or a TFDS name")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir")
    parser.add_argument("--folder", default=None, help="source=folder: folder/<split>/<class>/")
    parser.add_argument("--image-size", type=int, default=None, help="digits render size")
    parser.add_argument("--split", default="train", help="the split to measure")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images")
    parser.add_argument(
        "--scale", type=int, default=None, help="rescale the smaller side to this first"
    )
    parser.add_argument("--output", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    from vgg_flax.data.stats import pixel_stats  # TensorFlow: only once there is work to do

    options = {"source": args.source, "data_dir": args.data_dir, "folder": args.folder}
    if args.image_size:
        options["image_size"] = args.image_size
    stats = pixel_stats(options, split=args.split, max_images=args.max_images, scale=args.scale)
    text = json.dumps(stats, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
