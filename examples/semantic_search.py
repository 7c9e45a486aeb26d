"""Semantic search over a few sentences: the sentences and the query are embedded inside the
TEE; only vectors come back, ranked here by cosine similarity.

    python examples/semantic_search.py "how do I reset my password?" --simulation
"""

from __future__ import annotations

import numpy as np
from _common import connect, parser

DOCUMENTS = [
    "To change your password, open Settings and choose Security.",
    "Our office is closed on public holidays.",
    "Invoices are sent by email at the start of each month.",
    "If you forgot your login, use the 'Forgot password' link.",
    "The cafeteria serves lunch from noon to two.",
]

ap = parser(__doc__ or "")
ap.add_argument("query")
args = ap.parse_args()
with connect(args) as conn:
    docs = conn.run_model("minilm-embed", {"input": DOCUMENTS})["embedding"]
    query = conn.run_model("minilm-embed", {"input": [args.query]})["embedding"][0]
scores = docs @ query  # unit vectors: the dot product is the cosine
for i in np.argsort(-scores):
    print(f"{scores[i]:.3f}  {DOCUMENTS[i]}")
