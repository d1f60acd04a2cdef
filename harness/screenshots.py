"""`make screenshots`: the storefront and the operator's page in Chromium against make run's
stack, saved into docs/, and the storefront's first contentful paint as the browser reports it.

    python -m harness.screenshots [--out docs] [--loads 7]

The stack streams 20 events a second, as `make run` does, plus one record that cannot be
parsed, so the operator's page has a dead letter to show. The paint is measured over
`--loads` fresh browser contexts (no cache), each a first visit to `/`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from devkit.generator import RawRecord
from devkit.localrun import LocalRun
from devkit.sam import ROOT
from harness.browser import chromium, first_contentful_paint_ms

VIEWPORT = {"width": 1100, "height": 900}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--loads", type=int, default=7, help="fresh loads of / to measure the paint over")
    parser.add_argument("--warm-up", type=float, default=20.0, help="seconds of stream before the operator's page")
    args = parser.parse_args(argv)

    run = LocalRun(port=0, rate=20.0).start()
    try:
        assert run.feed is not None
        run.feed.produce([RawRecord("inventory", b"store1:broken", b"{not json")])  # one dead letter
        run.feed.flush()
        with chromium() as browser:
            paints = []
            for _ in range(args.loads):
                context = browser.new_context(viewport=VIEWPORT)
                page = context.new_page()
                page.goto(run.url + "/")
                page.wait_for_selector("#products tbody tr")
                paint = first_contentful_paint_ms(page)
                if paint is not None:
                    paints.append(paint)
                context.close()
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.goto(f"{run.url}/#/stock/store1?below=10")
            page.wait_for_selector("#inventory tbody tr")
            page.screenshot(path=str(args.out / "storefront.png"), full_page=True)
            time.sleep(max(0.0, args.warm_up))  # a few points on the freshness plot
            page.goto(f"{run.url}/admin.html#access_token={run.admin_token}")
            page.reload()
            page.wait_for_selector("#partition-table tbody tr")
            page.wait_for_selector("#reasons tbody tr")
            page.screenshot(path=str(args.out / "operator.png"), full_page=True)
            context.close()
    finally:
        run.stop()
    print(f"wrote {args.out / 'storefront.png'} and {args.out / 'operator.png'}")
    if paints:
        print(
            f"first contentful paint of / over {len(paints)} fresh loads: median {statistics.median(paints):.0f} ms, "
            f"min {min(paints):.0f} ms, max {max(paints):.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
