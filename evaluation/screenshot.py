"""The README's picture of the web page: a real server on the packaged model, two edits, a preview and
a coloured answer, photographed in headless Chromium.

    python -m evaluation.screenshot [--out docs/ui.png]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from evaluation.server import Server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/ui.png")
    args = ap.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on this machine (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp) / "data") as server:
        server.call("POST", "/edits", {"prompt": "The Louvre is located in", "target": "Madrid", "subject": "Louvre"})
        server.call("POST", "/edits", {"prompt": "The Eiffel Tower is located in", "target": "Rome"})
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(f"{server.url}/ui")
            expect(page.locator("#edits tbody tr")).to_have_count(2)
            page.fill("#prompt", "The Mona Lisa was painted by")
            page.fill("#target", "Rembrandt")
            page.fill("#probes", "Who painted the Mona Lisa?")
            page.click("#preview")
            expect(page.locator("#preview-table tbody tr")).to_have_count(2, timeout=600_000)
            page.fill("#ask", "Where is the Louvre?")
            page.click("#generate")
            expect(page.locator("#answer span.edited").first).to_be_visible(timeout=600_000)
            page.locator("#answer span.edited").first.hover()
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
