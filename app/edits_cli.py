"""`editserve edits export|import`: edit bundles from and into a running server, over its HTTP API.

    editserve edits export [--url URL] [--status active|withdrawn] [-o FILE]   (default: standard output)
    editserve edits import FILE [--url URL]                                    (FILE "-": standard input)

The import prints each line's result as the server reports it, then the summary; it exits 1 if any
line was not created. Only the standard library talks HTTP here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="editserve edits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--url",
        default=os.environ.get("EDITSERVE_URL", "http://127.0.0.1:8000"),
        help="the server (default $EDITSERVE_URL or http://127.0.0.1:8000)",
    )
    verbs = ap.add_subparsers(dest="verb", required=True)
    export = verbs.add_parser("export", help="write every edit as JSON lines")
    export.add_argument("--status", choices=("active", "withdrawn"), default=None)
    export.add_argument("-o", "--output", default="-", help="file to write (default: standard output)")
    imp = verbs.add_parser("import", help="insert the edits of a JSON-lines file (or a JSON list)")
    imp.add_argument("file", help='the bundle ("-": standard input)')
    args = ap.parse_args(argv)
    base = args.url.rstrip("/")
    try:
        if args.verb == "export":
            query = "?" + urllib.parse.urlencode({"status": args.status}) if args.status else ""
            with urllib.request.urlopen(f"{base}/edits/export{query}") as r:
                out = open(args.output, "wb") if args.output != "-" else sys.stdout.buffer
                try:
                    for line in r:
                        out.write(line)
                finally:
                    out.flush()
                    if out is not sys.stdout.buffer:
                        out.close()
            return 0
        body = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
        request = urllib.request.Request(
            f"{base}/edits/import", data=body, method="POST", headers={"Content-Type": "application/x-ndjson"}
        )
        failed = 0
        with urllib.request.urlopen(request) as r:
            for line in r:
                result = json.loads(line)
                print(json.dumps(result, ensure_ascii=False), flush=True)
                if "summary" in result:
                    failed = result["summary"]["lines"] - result["summary"]["created"]
        return 1 if failed else 0
    except urllib.error.HTTPError as exc:
        print(f"editserve edits {args.verb}: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"editserve edits {args.verb}: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
