"""`vgg-flax probe FEATS.npz [--test TEST.npz]`: a linear classifier on image descriptors.

The paper's linear SVM (Appendix B; or --classifier logistic) on the descriptors `vgg-flax
features` wrote, C chosen on a held-out 20% of the training descriptors (or given with --C).
Without --test, a stratified --test-fraction of FEATS is held out for testing. Prints top-1
accuracy and mean class recall (single-label) or mAP (multi-label), as a table or --json.
"""

from __future__ import annotations

import argparse
import json

from vgg_flax.cli import add_subcommand
from vgg_flax.transfer.probe import CLASSIFIERS, DEFAULT_CS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax probe`."""
    parser = add_subcommand(
        subparsers, "probe", "a linear SVM or logistic regression on descriptors", __doc__
    )
    parser.add_argument("features", help="training descriptors (.npz from vgg-flax features)")
    parser.add_argument("--test", help="test descriptors (.npz); default: hold out a fraction")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="without --test: the stratified share of FEATS held out for testing",
    )
    parser.add_argument(
        "--classifier",
        choices=CLASSIFIERS,
        default="svm",
        help="a linear SVM (the paper's) or logistic regression",
    )
    parser.add_argument("--C", type=float, help="the regularisation C (default: chosen)")
    parser.add_argument(
        "--Cs", type=float, nargs="+", default=list(DEFAULT_CS), help="candidate values of C"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the random seed of the held-out splits and the classifier",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Fit the probe and print its metrics."""
    from vgg_flax.transfer.descriptors import Descriptors
    from vgg_flax.transfer.probe import format_table, probe

    if args.C is not None and args.C <= 0:
        raise ValueError(f"--C must be positive, got {args.C}")
    train = Descriptors.load(args.features)
    test = Descriptors.load(args.test) if args.test else None
    result = probe(
        train.features,
        train.labels,
        None if test is None else test.features,
        None if test is None else test.labels,
        test_fraction=args.test_fraction,
        seed=args.seed,
        classifier=args.classifier,
        C=args.C,
        Cs=args.Cs,
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_table(result))
    return 0
