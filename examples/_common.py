"""What every example shares: connect with attestation (a policy file, or the simulation TEE
of a local `make serve-examples`, which prints a warning: it proves nothing)."""

from __future__ import annotations

import argparse

import blindinfer


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--url", default="https://127.0.0.1:8443", help="the server [%(default)s]")
    ap.add_argument("--policy", help="attestation policy TOML (see docs/policy.md)")
    ap.add_argument(
        "--simulation", action="store_true", help="accept a simulation TEE (local tests only)"
    )
    return ap


def connect(args: argparse.Namespace) -> blindinfer.Connection:
    """Verifies the server's evidence before anything is sent; raises if it does not hold."""
    return blindinfer.connect(args.url, args.policy, simulation_mode=args.simulation)
