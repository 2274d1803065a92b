"""The `vgg-flax summary` table: all twelve networks, their sizes and their cost."""

from __future__ import annotations

from vgg_flax.models import arch


def summary_rows(size: int = 224, num_classes: int = 1000) -> list[dict[str, object]]:
    """One row per network (six configs, each without and with BatchNorm)."""
    rows = []
    for config in arch.ARCHS:
        for batch_norm in (False, True):
            tv_name = next(
                (n for n, v in arch.TORCHVISION_ARCHS.items() if v == (config, batch_norm)), "-"
            )
            rows.append(
                {
                    "config": config + ("+BN" if batch_norm else ""),
                    "torchvision": tv_name,
                    "weight_layers": sum(1 for x in arch.layers(config) if x.kind == "conv") + 3,
                    "params": arch.count_params(config, batch_norm, num_classes),
                    "table2_millions": arch.TABLE2_MILLIONS[config],
                    "gmacs": arch.count_macs(config, size, num_classes) / 1e9,
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
