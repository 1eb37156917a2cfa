"""How fast is cascache's semantic lookup on Redis, next to RedisVL and a bare FT.SEARCH?

Question: on one Redis Stack server, with the same embeddings and the same
entries, what does a semantic lookup (excluding embedding) cost through

- cascache: `RedisStore.nearest` (HNSW index, pre-filtered to one namespace and
  scope; one Lua call runs the KNN query and reads the hits' counters; the
  reply is parsed into `CacheEntry`s);
- RedisVL: `SemanticCache.acheck(vector=...)` (its default index: FLAT, a
  vector range query, no filter) with a `CustomVectorizer` (its default
  vectorizer would download a model);
- bare ("ft_search"): the FT.SEARCH that cascache runs (same filter, HNSW
  breadth and hybrid policy), sent raw through redis-py with the reply left
  unparsed: the floor for this query on this index. "ft_search_auto" is the
  same without a forced hybrid policy, as a hand-written query would be.

at 10k and 100k entries? Targets (issue 5): cascache no slower than RedisVL at
p50, and within 1.5x of the bare FT.SEARCH.

Data: BANKING77 train texts embedded with the default embedder
(all-MiniLM-L6-v2 int8; vectors cached in bench/out/ under the same key as
bench/threshold.py). 1,000 texts (seeded) are held out as queries; the others
are entries, and perturbed copies of their vectors (Gaussian noise, cosine
~0.95 to the original: near-duplicates, like paraphrases) fill up to 100k.
Every system stores the same vectors and the same response text. Latency is
measured one query at a time, the systems taking turns on each query in a
random order so that machine noise hits them alike; throughput with
`--concurrency` lookups in flight from one event loop. Also reported:
cascache's recall@1 against exact search (HNSW is approximate; RedisVL's FLAT
index is exact), server memory per entry, and load times.

Run: .venv/bin/python bench/redis.py            (starts its own Redis Stack on loopback)
     .venv/bin/python bench/redis.py --url redis://127.0.0.1:6379   (an existing server; what the run adds is removed)
The last line printed is one JSON object with the figures.

The measuring code is in bench/_redis_bench.py. This file only fixes the import
path first: it is named like the redis package, and Python puts the folder of
the script it runs first on sys.path, so every script in bench/ would otherwise
find this file when anything (cascache included) imports `redis`.
"""

import importlib
import sys
from pathlib import Path

_BENCH = Path(__file__).resolve().parent


def _move_bench_last() -> None:
    """Keep bench/ importable (for _redis_bench) but behind site-packages (for redis-py)."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]


if __name__ == "__main__":
    _move_bench_last()
    importlib.import_module("_redis_bench").main()
elif __name__ == "redis":
    # Imported as the redis package by another script in bench/: put redis-py in our place.
    _move_bench_last()
    del sys.modules["redis"]
    sys.modules["redis"] = importlib.import_module("redis")
