"""Command line: inventory [--low-stock N] [--json] FILE.csv ..."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .core import InventoryError, parse, summarise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inventory", description=__doc__)
    p.add_argument("files", nargs="*", help="CSV files (default: stdin)")
    p.add_argument("--low-stock", type=int, default=5, metavar="N")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--version", action="version", version=f"inventory {__version__}")
    args = p.parse_args(argv)

    items = []
    try:
        if not args.files:
            items += parse(sys.stdin)
        for name in args.files:
            with open(name, newline="", encoding="utf-8") as f:
                items += parse(f)
    except (OSError, InventoryError) as e:
        print(f"inventory: {e}", file=sys.stderr)
        return 1

    s = summarise(items, args.low_stock)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
    else:
        print(f"{s['items']} items, {s['units']} units, total value {s['total_value']}")
        for cat, value in s["by_category"].items():
            print(f"  {cat:<12} {value:>10}")
        if s["low_stock"]:
            print("low stock: " + ", ".join(s["low_stock"]))
    return 0
