"""The `vgg-flax summary` table: all twelve networks, their sizes and their cost."""

from __future__ import annotations

import argparse

from vgg_flax import configs


def summary_rows(size: int = 224, num_classes: int = 1000) -> list[dict[str, object]]:
    """One row per network (six configs, each without and with BatchNorm)."""
    rows = []
    for config in configs.CONFIGS:
        for batch_norm in (False, True):
            tv_name = next(
                (n for n, v in configs.TORCHVISION_ARCHS.items() if v == (config, batch_norm)), "-"
            )
            rows.append(
                {
                    "config": config + ("+BN" if batch_norm else ""),
                    "torchvision": tv_name,
                    "weight_layers": sum(1 for x in configs.layers(config) if x.kind == "conv") + 3,
                    "params": configs.count_params(config, batch_norm, num_classes),
                    "table2_millions": configs.TABLE2_MILLIONS[config],
                    "gmacs": configs.count_macs(config, size, num_classes) / 1e9,
                }
            )
    return rows


def format_table(rows: list[dict[str, object]], size: int) -> str:
    """Render summary rows as an aligned text table."""
    header = f"{'network':<10}{'torchvision':<13}{'layers':>7}{'parameters':>14}"
    header += f"{'Table 2 (M)':>13}{f'GMACs@{size}':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['config']:<10}{r['torchvision']:<13}{r['weight_layers']:>7}{r['params']:>14,}"
            f"{r['table2_millions']:>13}{r['gmacs']:>13.3f}"
        )
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax summary`."""
    parser = subparsers.add_parser("summary", help="table of all 12 networks: parameters, MACs")
    parser.add_argument("--size", type=int, default=224, help="input side for MACs (default 224)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary table."""
    print(format_table(summary_rows(args.size, args.num_classes), args.size))
    return 0
