"""Paper ingestion speed, as JSON: PDF parse rate and cache-hit latency.

Generates a 50-page two-column PDF (tests/pdfgen.py: headings, hyphenated words,
running heads, page numbers, columns drawn row by row), then measures:

- parse: `load_paper` of the local file (PDFium text runs + column layout + structure),
  best of `--repeats`, as pages per second, and per CPU second
  (`pages_per_cpu_s`, which a busy machine does not skew); one process;
- cache: `load_paper` of the same PDF served by a local HTTP server on 127.0.0.1,
  once to fill the cache (fetch + parse) and then `--hits` times from the cache,
  with the median and the worst hit in milliseconds.

Aim (the issue's): >= 20 pages/s on a 2-core machine, a cache hit < 50 ms.
Usage: python bench/ingest.py [--pages 50] [--repeats 3] [--hits 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pdfgen import ColumnPage, column, make_two_column_pdf  # noqa: E402
from tools.papers import load_paper  # noqa: E402

_FILLER = (
    "Multi-head latent attention compresses keys and values into a latent vector whose "
    "dimension is much smaller than the number of heads times the head dimension, so the "
    "cache per token shrinks while the quality of the model stays close to full attention. "
    "Fine-grained experts and shared experts let each token use a small part of the "
    "parameters, which keeps training costs low."
)


def paper_pages(n: int) -> list[ColumnPage]:
    pages = []
    for i in range(n):
        left = column(f"## {i + 1} Section {i + 1}", _FILLER, _FILLER, _FILLER)
        right = column(_FILLER, f"## {i + 1}.1 Details", _FILLER, _FILLER)
        pages.append(ColumnPage(left=left, right=right))
    pages[0] = ColumnPage(
        top=["# A Benchmark Paper on Latent Attention", "Ada Lovelace and Alan Turing"],
        left=pages[0].left,
        right=pages[0].right,
    )
    return pages


def serve(path: Path) -> tuple[ThreadingHTTPServer, str]:
    data = path.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/paper.pdf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hits", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reprodesk-bench-") as tmp:
        pdf = make_two_column_pdf(Path(tmp) / "bench.pdf", paper_pages(args.pages))
        size = pdf.stat().st_size
        walls, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            paper = load_paper(str(pdf))
            walls.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        assert len(paper.pages) == args.pages, len(paper.pages)
        httpd, url = serve(pdf)
        try:
            cache = Path(tmp) / "cache"
            start = time.perf_counter()
            load_paper(url, cache_dir=cache)
            miss = time.perf_counter() - start
            hits = []
            for _ in range(args.hits):
                start = time.perf_counter()
                load_paper(url, cache_dir=cache)
                hits.append(time.perf_counter() - start)
        finally:
            httpd.shutdown()
            httpd.server_close()
    best = min(walls)
    print(
        json.dumps(
            {
                "pdf_pages": args.pages,
                "pdf_bytes": size,
                "parse_s_best": round(best, 3),
                "parse_s_all": [round(w, 3) for w in walls],
                "pages_per_s": round(args.pages / best, 1),
                # CPU time is what other load on the machine does not change.
                "pages_per_cpu_s": round(args.pages / min(cpu), 1),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "cache_miss_ms": round(miss * 1000, 1),
                "cache_hit_ms_median": round(statistics.median(hits) * 1000, 2),
                "cache_hit_ms_max": round(max(hits) * 1000, 2),
                "sections": len(paper.sections),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
