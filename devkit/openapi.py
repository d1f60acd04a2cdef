"""`make openapi`: writes the read API's OpenAPI document, generated from its routes.

python -m devkit.openapi docs/openapi.json
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

from devkit.sam import describe, load_handler


def document() -> dict[str, object]:
    function = describe("ApiFunction")
    handler = inspect.unwrap(load_handler(function))  # the handler module's own function
    loaded: dict[str, object] = json.loads(handler.__globals__["openapi_json"]())
    return loaded


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = json.dumps(document(), indent=2) + "\n"
    if not args or args[0] == "-":
        sys.stdout.write(text)
    else:
        Path(args[0]).write_text(text)
        print(f"wrote {args[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
