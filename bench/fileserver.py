"""A static file server on 127.0.0.1 that streams bodies with sendfile(2), for big artifacts.

tests/support/mirror.py reads a whole file into memory and hashes it for its ETag on every
request, which
is right for small stand-ins and wrong for a 512 MiB artifact: the server would then be what the
throughput benchmark measures. This one sends straight from the page cache.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        try:
            self.connection.sendfile(source)
        except (AttributeError, OSError):
            shutil.copyfileobj(source, outputfile)


def serve(directory: Path, ready_file: Path) -> None:
    handler = functools.partial(_Handler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        host, port = server.server_address[:2]
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(f"http://{host!s}:{port}")
        os.replace(tmp, ready_file)  # whoever polls for it never reads half a URL
        server.serve_forever(poll_interval=0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--ready-file", type=Path, required=True, help="the base URL, once up")
    args = parser.parse_args()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    serve(args.directory, args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
