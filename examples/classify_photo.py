"""Classify a photo (ImageNet classes) inside the TEE.

python examples/classify_photo.py cat.jpg --simulation
"""

from __future__ import annotations

from pathlib import Path

from _common import connect, parser

ap = parser(__doc__ or "")
ap.add_argument("photo", type=Path, help="a JPEG or PNG")
args = ap.parse_args()
with connect(args) as conn:
    out = conn.run_model("mobilenet-imagenet", {"input": args.photo.read_bytes()})
for label, score in zip(out["labels"], out["scores"], strict=True):
    print(f"{score:6.1%}  {label.decode()}")
