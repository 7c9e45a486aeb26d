"""Test documents rendered with Pillow: an invoice and a degraded "scanned" page of prose, each
with the text it holds (the OCR reference), plus the character error rate."""

from __future__ import annotations

import io
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@cache
def font_path() -> Path:
    if _DEJAVU.exists():
        return _DEJAVU
    out = subprocess.run(
        ["fc-list", "--format", "%{file}\n", ":fontformat=TrueType"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not out:
        raise FileNotFoundError("no TrueType font installed (fonts-dejavu-core)")
    return Path(sorted(out)[0])


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), size)


INVOICE_TITLE = "INVOICE No. 2024-0117"
INVOICE_HEAD = ["Billed to: Northwind Traders Ltd", "Date: 14 March 2024"]
INVOICE_ITEMS = [
    ("Office chairs (4)", "389.96"),
    ("Standing desk", "529.00"),
    ("Monitor arm", "74.50"),
    ("USB-C docking station", "189.99"),
    ("Delivery and setup", "45.00"),
]
INVOICE_TOTAL = ("TOTAL DUE", "1228.45")


def invoice() -> tuple[bytes, list[str]]:
    """A PNG invoice (about 150 dpi: 1240 x 1000 px, 14-pt text) and its lines in reading
    order (an item's description and price are two regions on one row)."""
    img = Image.new("RGB", (1240, 1000), "white")
    d = ImageDraw.Draw(img)
    lines: list[str] = []
    d.text((90, 70), INVOICE_TITLE, font=_font(44), fill="black")
    lines.append(INVOICE_TITLE)
    y = 170
    body = _font(30)
    for text in INVOICE_HEAD:
        d.text((90, y), text, font=body, fill="black")
        lines.append(text)
        y += 50
    y += 40
    for name, price in INVOICE_ITEMS:
        d.text((90, y), name, font=body, fill="black")
        d.text((1150, y), price, font=body, fill="black", anchor="ra")
        lines += [name, price]
        y += 56
    d.line((90, y + 10, 1150, y + 10), fill="black", width=2)
    y += 40
    bold = _font(34)
    d.text((90, y), INVOICE_TOTAL[0], font=bold, fill="black")
    d.text((1150, y), INVOICE_TOTAL[1], font=bold, fill="black", anchor="ra")
    lines += list(INVOICE_TOTAL)
    return _png(img), lines


PARAGRAPHS = [
    "The committee met on Tuesday to review the annual budget and the plans for the new",
    "library wing. Members agreed that the reading rooms should open before the autumn",
    "term, and that the archive would move to the basement once the shelving arrives.",
    "A short report on the heating system was presented; the boiler is twenty years old",
    "and the engineers recommend replacing it next spring. The cost is estimated at",
    "eighteen thousand pounds, which the reserve fund can cover without new borrowing.",
    "Questions from the public concerned parking, opening hours and access for visitors",
    "with reduced mobility. The chair thanked everyone and closed the meeting at nine.",
]


def scanned_page(seed: int = 7, leading: int = 40) -> tuple[bytes, list[str]]:
    """A page of prose (1400 x 900 px, ~13-pt at 150 dpi, ``leading`` px from line to line)
    degraded like a cheap scan: rotated 1.5 degrees, blurred, gaussian noise (sigma 12), JPEG
    quality 60."""
    img = Image.new("L", (1400, 900), 255)
    d = ImageDraw.Draw(img)
    font = _font(28)
    y = 90
    for text in PARAGRAPHS:
        d.text((80, y), text, font=font, fill=0)
        y += leading
    img = img.rotate(1.5, resample=Image.Resampling.BICUBIC, fillcolor=255, expand=False)
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    rng = np.random.default_rng(seed)
    noisy = np.asarray(img, np.float32) + rng.normal(0.0, 12.0, (img.height, img.width))
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=60)
    return buf.getvalue(), list(PARAGRAPHS)


def blank_page() -> bytes:
    return _png(Image.new("RGB", (800, 1000), "white"))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(got: list[str], want: list[str]) -> float:
    """Character error rate: edit distance between the lines joined by newlines, over the
    reference's length."""
    ref = "\n".join(want)
    return levenshtein("\n".join(got), ref) / len(ref)
