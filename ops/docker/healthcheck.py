"""Container healthcheck: exit 0 when the URL answers 2xx (stdlib only, no spaces needed in args)."""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as answer:  # noqa: S310 (a local health URL)
        sys.exit(0 if 200 <= answer.status < 300 else 1)
except OSError as err:
    print(f"{sys.argv[1]}: {err}", file=sys.stderr)
    sys.exit(1)
