"""Read the text of an invoice or a scanned page inside the TEE.

python examples/invoice_ocr.py invoice.png --simulation
"""

from __future__ import annotations

from pathlib import Path

from _common import connect, parser

ap = parser(__doc__ or "")
ap.add_argument("page", type=Path, help="a JPEG or PNG of the page")
args = ap.parse_args()
with connect(args) as conn:
    out = conn.run_model("ocr", {"input": args.page.read_bytes()})
for line, box in zip(out["lines"], out["boxes"], strict=True):
    print(f"{box.round().astype(int).tolist()!s:>24}  {line.decode()}")
