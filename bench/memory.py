"""The findings memory's speed, as JSON: one CLI search, in-process search at 1k, 10k and
100k findings, publish throughput, and the embedding against sentence-transformers.

- cli_search: wall time, CPU time and peak RSS of `reprodesk findings search "KV cache per token"`
  as a user runs it (a new process: interpreter start, imports, store open, model load,
  query embedding, search, table), median of --cli-repeats after one untimed run (page
  cache). Run on the 1k store and on the largest. Beside it, the floor it stands on:
  `python -c "import chromadb"` and `reprodesk --help` (the CLI's own imports).
- search_ms: `FindingStore.search(query, k=5)` in one process, query embedding
  included, p50 and p95 over --queries different queries (each asked once, so no cache
  helps), at each store size. That is the embedded store's read path: the exact numpy
  snapshot (memory/snapshot.py). search_ms_chroma: the same queries through Chroma's
  HNSW index (``read_snapshot=False``), the path of a server-mode store.
- publish: `FindingStore.add` of the first 1k findings (real embedding + upsert + the
  snapshot), in findings/s; and the upsert rate of vectors already made (the 10k and 100k
  fill, in batches of 5000: Chroma's upsert plus rewriting the snapshot each batch).
- embedding: the numpy encoder's query latency and document throughput, and (with
  --compare, the default) sentence-transformers' on the same texts and its import time.

How the 100k store is filled within minutes on 2 cores: the model embeds about 20-40
findings/s here, so 100k real embeddings would take an hour. The first 1k findings are
embedded for real (that is the publish figure). The other 99k are distinct synthetic
findings (their own ids, texts and metadata) whose vectors are those real ones plus
Gaussian noise, renormalised: clusters around real findings, the shape HNSW is searched
on. Every search is against the real query embedding.

The machine may be shared: its load average is reported with the figures.

Usage: python bench/memory.py [--sizes 1000,10000,100000] [--queries 50]
       [--cli-repeats 5] [--no-compare] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# This file is named like the package it measures: keep bench/ off the import path
# (`python bench/memory.py` puts it first), so that `import memory` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from memory.embedding import minilm  # noqa: E402
from memory.store import FindingStore  # noqa: E402
from reprodesk.schemas import Finding  # noqa: E402

CLI_QUERY = "KV cache per token"
NOISE = 0.02  # per-dimension std of the jitter; a vector moves ~0.4 before renormalising
REAL = 1000  # findings embedded for real; the rest reuse their vectors with noise

MECHANISMS = {
    "mla": (
        "Multi-head Latent Attention caches a low-rank latent, so the KV cache per token is "
        "a fraction of multi-head attention's",
        "kv_cache_ratio",
        "x",
    ),
    "moe": (
        "Auxiliary-loss-free balancing keeps expert load even across experts",
        "expert_load_cv",
        "",
    ),
    "mtp": (
        "Multi-token prediction densifies the training signal and improves sample efficiency",
        "loss_ratio",
        "x",
    ),
    "fp8": (
        "FP8 matmul with fine-grained block scaling keeps relative error below 0.25 percent",
        "relative_error",
        "",
    ),
    "grpo": (
        "GRPO drops the value network, so training needs no critic and less memory",
        "peak_memory_mb",
        "MB",
    ),
    "gqa": (
        "Grouped-query attention shares keys and values across query heads",
        "kv_heads_ratio",
        "x",
    ),
    "rope": (
        "Rotary position embeddings extrapolate to longer contexts with interpolation",
        "ppl_ratio",
        "x",
    ),
    "flash": (
        "Tiled attention never materialises the full score matrix and saves memory",
        "peak_memory_ratio",
        "x",
    ),
}
SCALES = ["d_model=64", "d_model=128", "d_model=256", "context 512", "context 2048"]
QUERIES = [
    "KV cache per token",
    "memory held per generated token for attention",
    "how much smaller is the key value cache",
    "experts receive uneven numbers of tokens",
    "load balancing without an auxiliary loss",
    "predicting several future tokens at once",
    "low precision matrix multiply numerical error",
    "8-bit floating point training accuracy",
    "reinforcement learning without a value model",
    "critic-free policy optimisation memory",
    "sharing keys between attention heads",
    "position encoding for long context",
    "attention that does not store the score matrix",
    "which claims were not reproduced",
    "peak memory of the reproduction",
    "relative error of the quantised kernel",
    "latent compression of keys and values",
    "expert utilisation coefficient of variation",
    "sample efficiency of the training signal",
    "context length extrapolation perplexity",
]


def finding(i: int) -> Finding:
    """The i-th synthetic finding: distinct id, text and numbers for every i."""
    keys = list(MECHANISMS)
    mechanism = keys[i % len(keys)]
    claim, metric, unit = MECHANISMS[mechanism]
    run = f"bench-{mechanism}-{i // 40:05d}"
    verdicts = ["reproduced", "partial", "not reproduced", "not checkable"]
    return Finding(
        id=f"{run}:c{i % 40}",
        paper=f"{mechanism.upper()} paper {i % 97}",
        source=f"arxiv:2405.{i % 10000:05d}",
        mechanism=mechanism,
        claim=f"{claim} (variant {i}, {SCALES[i % len(SCALES)]})",
        metric=metric,
        paper_value=round(0.05 + (i % 13) * 0.01, 3),
        measured_value=round(0.04 + (i % 17) * 0.011, 4),
        unit=unit,
        verdict=verdicts[i % len(verdicts)],
        setup=f"bwrap sandbox, cpu; {SCALES[(i // 7) % len(SCALES)]}",
        evidence=f"run {run}, job j{i % 5}, metric claims.{i % 3}.measured_value",
        gotchas=[f"gotcha {i % 11} of {mechanism}"],
        date=f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}",
        run_id=run,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank


def search_ms(store: FindingStore, queries: list[str]) -> dict[str, float]:
    store.search("warm up", k=5)
    walls = []
    for query in queries:
        started = time.perf_counter()
        hits = store.search(query, k=5)
        walls.append((time.perf_counter() - started) * 1000)
        assert len(hits) == 5
    return {
        "p50": round(statistics.median(walls), 2),
        "p95": round(percentile(walls, 0.95), 2),
        "max": round(max(walls), 2),
    }


def jittered(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    picked = base[rng.integers(0, len(base), size=n)]
    noisy = picked + rng.normal(0.0, NOISE, size=picked.shape).astype(np.float32)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


# Spawns argv and prints its peak RSS. A small process does the spawning because Linux
# starts a child's ru_maxrss at its parent's RSS when the parent forks (this bench holds
# hundreds of MB), whatever the child does after exec.
_RSS_WRAPPER = (
    "import os, sys\n"
    "null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]\n"
    "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=null)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "cpu = usage.ru_utime + usage.ru_stime\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss // 1024, cpu)\n"
)


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """(wall s, peak RSS MB, CPU s) of one child process, its output discarded.

    CPU time (user + system) is what the process itself needed; on a shared machine the
    wall time also holds the time it waited for a core.

    The wall time includes the wrapper's own start (python -c with no imports, ~0.03 s on
    this machine: reported as floors.python_bare_s).
    """
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-c", _RSS_WRAPPER, *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"{argv}: the wrapper failed: {done.stderr[-2000:]}")
    code, rss, cpu = done.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{argv} exited {code}: {done.stderr[-2000:]}")
    return wall, int(rss), float(cpu)


def cli_search(home: Path, repeats: int) -> dict[str, Any]:
    env = {**os.environ, "REPRODESK_HOME": str(home), "COLUMNS": "80"}
    env.pop("REPRODESK_CHROMA_URL", None)
    argv = [sys.executable, "-m", "reprodesk", "findings", "search", CLI_QUERY]
    run_child(argv, env)  # page cache
    runs = [run_child(argv, env) for _ in range(repeats)]
    walls = [wall for wall, _, _ in runs]
    return {
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_min": round(min(walls), 3),
        "cpu_s_median": round(statistics.median(cpu for _, _, cpu in runs), 3),
        "peak_rss_mb": max(rss for _, rss, _ in runs),
    }


def floors(repeats: int) -> dict[str, float]:
    """What every CLI search pays before it does anything of its own."""
    env = dict(os.environ)
    out = {}
    for name, argv in {
        "python_bare_s": [sys.executable, "-c", "pass"],
        "python_import_chromadb_s": [sys.executable, "-c", "import chromadb"],
        "reprodesk_help_s": [sys.executable, "-m", "reprodesk", "--help"],
    }.items():
        run_child(argv, env)
        runs = [run_child(argv, env) for _ in range(repeats)]
        out[name] = round(statistics.median(wall for wall, _, _ in runs), 3)
        out[name.replace("_s", "_cpu_s")] = round(statistics.median(c for _, _, c in runs), 3)
    return out


def embedding(compare: bool) -> dict[str, Any]:
    model = minilm()
    docs = [finding(i).document() for i in range(128)]
    model(docs[:8])
    walls = []
    for query in QUERIES:
        started = time.perf_counter()
        model.query(query)
        walls.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    model(docs)
    result: dict[str, Any] = {
        "numpy_query_ms_p50": round(statistics.median(walls), 2),
        "numpy_docs_per_s": round(len(docs) / (time.perf_counter() - started), 1),
    }
    if not compare:
        return result
    script = (
        "import time, json, statistics, sys\n"
        "t = time.perf_counter()\n"
        "from sentence_transformers import SentenceTransformer\n"
        "imported = time.perf_counter() - t\n"
        "from memory.embedding import model_dir\n"
        "m = SentenceTransformer(str(model_dir()), device='cpu')\n"
        "queries, docs = json.loads(sys.stdin.read())\n"
        "m.encode(docs[:8])\n"
        "walls = []\n"
        "for q in queries:\n"
        "    t = time.perf_counter()\n"
        "    m.encode([q])\n"
        "    walls.append((time.perf_counter() - t) * 1e3)\n"
        "t = time.perf_counter(); m.encode(docs, batch_size=32)\n"
        "rate = len(docs) / (time.perf_counter() - t)\n"
        "print(json.dumps({'st_import_s': round(imported, 2),\n"
        "    'st_query_ms_p50': round(statistics.median(walls), 2),\n"
        "    'st_docs_per_s': round(rate, 1)}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([QUERIES, docs]),
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
        check=False,
    )
    if done.returncode == 0:
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    else:
        result["sentence_transformers"] = f"not measured: {done.stderr.strip()[-300:]}"
    return result


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--cli-repeats", type=int, default=5)
    parser.add_argument("--no-compare", action="store_true", help="skip sentence-transformers")
    parser.add_argument("--keep", type=Path, help="build the stores here and keep them")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if sizes[0] < REAL:
        raise SystemExit(f"--sizes: the smallest store is the {REAL} really embedded findings")
    queries = (QUERIES * (1 + args.queries // len(QUERIES)))[: args.queries]
    queries = [f"{q}" if i < len(QUERIES) else f"{q} ({i})" for i, q in enumerate(queries)]

    report: dict[str, Any] = {"machine": machine()}
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    home = root / "home"
    rng = np.random.default_rng(0)
    try:
        report["embedding"] = embedding(not args.no_compare)
        report["floors"] = floors(args.cli_repeats)
        with FindingStore.open(home / "memory") as store:
            first = [finding(i) for i in range(REAL)]
            started = time.perf_counter()
            store.add(first)
            publish_s = time.perf_counter() - started
            report["publish"] = {
                "findings": REAL,
                "findings_per_s": round(REAL / publish_s, 1),
                "republish_same_ids_count_after": None,
            }
            base = minilm()([f.document() for f in first])
            store.add(first[:50])  # re-publishing updates, never duplicates
            report["publish"]["republish_same_ids_count_after"] = store.count()
            report["search_ms"] = {}
            report["search_ms_chroma"] = {}
            report["cli_search"] = {}
            have = REAL
            upsert_s, upserted = 0.0, 0
            for size in sizes:
                step = 5000
                for start in range(have, size, step):
                    batch = [finding(i) for i in range(start, min(size, start + step))]
                    vectors = jittered(base, len(batch), rng)
                    started = time.perf_counter()
                    store.upsert_embedded(batch, vectors)
                    upsert_s += time.perf_counter() - started
                    upserted += len(batch)
                have = size
                assert store.count() == size
                report["search_ms"][str(size)] = search_ms(store, queries)
                # The same queries through Chroma's own index (HNSW), as a server-mode
                # store or a store whose snapshot is being rebuilt is read.
                assert store.path is not None
                with FindingStore(store.path, read_snapshot=False) as chroma:
                    report["search_ms_chroma"][str(size)] = search_ms(chroma, queries)
                if size in (sizes[0], sizes[-1]):
                    store.close()  # the CLI process opens the directory itself
                    report["cli_search"][str(size)] = cli_search(home, args.cli_repeats)
            if upserted:
                report["publish"]["upsert_embedded_per_s"] = round(upserted / upsert_s, 1)
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        files = [p for p in (home / "memory").rglob("*") if p.is_file()]
        report["store_mb"] = round(sum(p.stat().st_size for p in files) / 2**20)
        report["snapshot_mb"] = round(
            sum(p.stat().st_size for p in files if p.parent.name == "snapshot") / 2**20
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
