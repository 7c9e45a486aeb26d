"""``python -m convert [NAME ...]``: build the example bundles into .cache/examples."""

from __future__ import annotations

import argparse
import json

from convert._driver import CONVERTERS, OUT, build_all


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    ap.add_argument("names", nargs="*", choices=[*CONVERTERS, []], help="default: all")
    ap.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = ap.parse_args()
    doc = build_all(args.names or None, OUT, progress=not args.json)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        for name, entry in doc.items():
            print(f"{name}: {len(entry['files'])} files, bundle sha256 {entry['bundle_sha256']}")


if __name__ == "__main__":
    main()
