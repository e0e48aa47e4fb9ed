"""Writes the OpenAPI reference of every service to docs/api/<service>.openapi.json.

python -m shared.apidocs          # rewrite
python -m shared.apidocs --check  # exit 1 if a committed file is stale
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import services

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "api"


def render() -> dict[str, str]:
    documents = {}
    for name in sorted(m.name for m in pkgutil.iter_modules(services.__path__)):
        app = importlib.import_module(f"services.{name}.app").create_app()
        documents[f"{name}.openapi.json"] = json.dumps(app.openapi(), indent=2) + "\n"
    return documents


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    documents = render()
    if "--check" in args:
        stale = [n for n, text in documents.items() if _read(TARGET / n) != text]
        if stale:
            print(f"stale API reference: {', '.join(stale)}; run `python -m shared.apidocs`")
            return 1
        return 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        (TARGET / name).write_text(text)
    print(f"wrote {len(documents)} OpenAPI documents to {TARGET.relative_to(ROOT)}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(main())
