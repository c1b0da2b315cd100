"""Regenerate docs/asyncapi.json and docs/schemas/*.json from the payload models."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.asyncapi import document, schemas

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    (ROOT / "docs" / "schemas").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "asyncapi.json").write_text(json.dumps(document(), indent=2) + "\n")
    for name, schema in schemas().items():
        (ROOT / "docs" / "schemas" / f"{name}.json").write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    main()
