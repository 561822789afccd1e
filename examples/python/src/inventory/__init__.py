"""Summarise stock CSV files: total value, low-stock items, per-category totals."""

__version__ = "0.1.0"
