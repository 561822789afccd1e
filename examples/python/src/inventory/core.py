"""Parsing and summarising; no I/O beyond the file object it is given."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Iterable, TextIO

REQUIRED = ("sku", "name", "category", "quantity", "unit_price")


class InventoryError(ValueError):
    """A malformed inventory file."""


@dataclass(frozen=True)
class Item:
    sku: str
    name: str
    category: str
    quantity: int
    unit_price: Decimal

    @property
    def value(self) -> Decimal:
        return self.unit_price * self.quantity


def parse(f: TextIO) -> list[Item]:
    reader = csv.DictReader(f)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise InventoryError(f"missing columns: {', '.join(missing)}")
    items = []
    for line, row in enumerate(reader, start=2):
        try:
            qty = int(row["quantity"])
            price = Decimal(row["unit_price"])
        except (ValueError, InvalidOperation) as e:
            raise InventoryError(f"line {line}: {e}") from None
        if qty < 0 or price < 0:
            raise InventoryError(f"line {line}: negative quantity or price")
        items.append(Item(row["sku"].strip(), row["name"].strip(), row["category"].strip() or "other", qty, price))
    return items


def summarise(items: Iterable[Item], low_stock: int = 5) -> dict:
    items = list(items)
    by_category: dict[str, Decimal] = {}
    for it in items:
        by_category[it.category] = by_category.get(it.category, Decimal(0)) + it.value
    return {
        "items": len(items),
        "units": sum(it.quantity for it in items),
        "total_value": str(sum((it.value for it in items), Decimal(0))),
        "by_category": {k: str(v) for k, v in sorted(by_category.items())},
        "low_stock": sorted(it.sku for it in items if it.quantity <= low_stock),
    }
