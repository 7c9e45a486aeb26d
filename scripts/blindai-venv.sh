#!/usr/bin/env bash
# Create (once) the separate virtual environment that holds the unmodified BlindAI 0.6.3 client,
# for tests/compat/test_blindai_client.py. Usage: scripts/blindai-venv.sh [VENV_DIR] [PYTHON]
#
# blindai==0.6.3 is installed with --no-deps: its declared dependencies pull torch, whisper,
# transformers, torchaudio, ffmpeg-python and sgx-dcap-quote-verify-python, which the core path
# (connect / upload_model / run_model / delete_model) never calls. We add only what that path
# imports; tests/compat/blindai_harness.py registers empty stand-ins for the rest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$here/.cache/blindai-venv}"
python="${2:-python3}"
stamp="$venv/.blindai-0.6.3-ready"
if [[ -f "$stamp" ]]; then
    echo "$venv"
    exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "blindai==0.6.3"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "numpy<1.25" "requests>=2.28,<3" "cbor2>=5.4.3,<6" "cryptography" "toml" \
    "importlib_metadata" "typing_extensions"
touch "$stamp"
echo "$venv"
