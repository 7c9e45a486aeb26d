"""Enrol a face from one photo and verify it in another, inside the TEE: only 128 numbers per
face come back, and the photos are never visible outside it.

    python examples/face_verify.py enrol.jpg probe.jpg --simulation
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import connect, parser

# Euclidean distance between L2-normalised embeddings below which two faces are one person
# (aligned crops; measured in docs/pipelines/face.md).
THRESHOLD = 0.4

ap = parser(__doc__ or "")
ap.add_argument("enrol", type=Path, help="a photo of the person (JPEG or PNG)")
ap.add_argument("probe", type=Path, help="the photo to check")
ap.add_argument("--threshold", type=float, default=THRESHOLD)
args = ap.parse_args()
with connect(args) as conn:
    enrolled = conn.run_model("face-embed", {"input": args.enrol.read_bytes()})
    probe = conn.run_model("face-embed", {"input": args.probe.read_bytes()})
if len(enrolled["embeddings"]) != 1:
    raise SystemExit(f"the enrolment photo must show one face; it shows {len(enrolled['boxes'])}")
if len(probe["embeddings"]) == 0:
    raise SystemExit("no face found in the probe photo")
distances = np.linalg.norm(probe["embeddings"] - enrolled["embeddings"][0], axis=1)
best = int(distances.argmin())
verdict = "same person" if distances[best] < args.threshold else "different person"
print(f"{verdict}: distance {distances[best]:.3f} (threshold {args.threshold}), "
      f"face at {probe['boxes'][best].round().tolist()}")  # fmt: skip
