"""`editserve edits export|import`: edit bundles from and into a running server, over its HTTP API
(through `editserve.client`).

    editserve edits export [--url URL] [--status active|withdrawn] [-o FILE]   (default: standard output)
    editserve edits import FILE [--url URL]                                    (FILE "-": standard input)

The key, when the server has keys, comes from --api-key or $EDITSERVE_API_KEY. The import prints each
line's result as the server reports it, then the summary; it exits 1 if any line was not created.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

from editserve.client import Client, EditServeError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="editserve edits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--url",
        default=os.environ.get("EDITSERVE_URL", "http://127.0.0.1:8000"),
        help="the server (default $EDITSERVE_URL or http://127.0.0.1:8000)",
    )
    ap.add_argument("--api-key", default=None, help="an API key (default $EDITSERVE_API_KEY)")
    verbs = ap.add_subparsers(dest="verb", required=True)
    export = verbs.add_parser("export", help="write every edit as JSON lines")
    export.add_argument("--status", choices=("active", "withdrawn"), default=None)
    export.add_argument("-o", "--output", default="-", help="file to write (default: standard output)")
    imp = verbs.add_parser("import", help="insert the edits of a JSON-lines file (or a JSON list)")
    imp.add_argument("file", help='the bundle ("-": standard input)')
    args = ap.parse_args(argv)
    try:
        with Client(args.url.rstrip("/"), api_key=args.api_key) as client:
            if args.verb == "export":
                out = open(args.output, "w", encoding="utf-8") if args.output != "-" else sys.stdout
                try:
                    for line in client.export_edits(args.status):
                        out.write(json.dumps(line, ensure_ascii=False) + "\n")
                finally:
                    out.flush()
                    if out is not sys.stdout:
                        out.close()
                return 0
            body = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
            failed = 0
            for result in client.import_edits(body):
                print(json.dumps(result, ensure_ascii=False), flush=True)
                if "summary" in result:
                    failed = result["summary"]["lines"] - result["summary"]["created"]
            return 1 if failed else 0
    except EditServeError as exc:
        print(f"editserve edits {args.verb}: {exc}", file=sys.stderr)
        return 1
    except (httpx.TransportError, OSError) as exc:
        print(f"editserve edits {args.verb}: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
