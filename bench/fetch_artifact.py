"""One download and sha256 check through agentd's artifact cache, as converge does each artifact.

Usage: fetch_artifact.py CACHE_DIR URL SHA256; prints {"seconds": ..., "bytes": ...} on stdout,
the seconds being those of the fetch alone (the interpreter's start-up and imports excluded).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from agentd.converge.fetch import ArtifactCache


def main() -> int:
    cache_dir, url, sha256 = sys.argv[1:4]
    start = time.perf_counter()
    result = ArtifactCache(Path(cache_dir)).fetch(url, sha256)
    seconds = time.perf_counter() - start
    if not result.downloaded:
        sys.exit("the artifact was already in the cache: nothing was measured")
    print(json.dumps({"seconds": seconds, "bytes": result.size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
