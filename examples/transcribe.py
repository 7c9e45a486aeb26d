"""Transcribe a recording inside the TEE: the WAV goes over attested TLS, the text comes back.

python examples/transcribe.py meeting.wav --simulation
"""

from __future__ import annotations

from pathlib import Path

from _common import connect, parser

ap = parser(__doc__ or "")
ap.add_argument("wav", type=Path, help="a WAV file (any common rate, mono or stereo)")
args = ap.parse_args()
with connect(args) as conn:
    out = conn.run_model("whisper-tiny-en", {"input": args.wav.read_bytes()})
print(out["text"][0].decode())
