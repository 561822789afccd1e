import io
import json
import unittest
from contextlib import redirect_stdout
from decimal import Decimal
from pathlib import Path

from inventory.cli import main
from inventory.core import InventoryError, parse, summarise

SAMPLE = Path(__file__).resolve().parent.parent / "src" / "inventory" / "sample.csv"


class ParseTest(unittest.TestCase):
    def test_parse_sample(self):
        with open(SAMPLE, newline="") as f:
            items = parse(f)
        self.assertEqual(len(items), 4)
        self.assertEqual(items[0].value, Decimal("30.00"))

    def test_missing_column(self):
        with self.assertRaisesRegex(InventoryError, "unit_price"):
            parse(io.StringIO("sku,name,category,quantity\n"))

    def test_bad_number(self):
        with self.assertRaisesRegex(InventoryError, "line 2"):
            parse(io.StringIO("sku,name,category,quantity,unit_price\nX,x,c,many,1\n"))


class SummaryTest(unittest.TestCase):
    def test_summary(self):
        with open(SAMPLE, newline="") as f:
            s = summarise(parse(f), low_stock=3)
        self.assertEqual(s["units"], 295)
        self.assertEqual(s["total_value"], "48.29")
        self.assertEqual(s["by_category"]["safety"], "15.00")
        self.assertEqual(s["low_stock"], ["A-101", "C-300"])

    def test_cli_json(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["--json", str(SAMPLE)]), 0)
        self.assertEqual(json.loads(out.getvalue())["items"], 4)


if __name__ == "__main__":
    unittest.main()
