"""Serve the browser demo on this machine:

    python -m ddpm_lightning.demo DIR [port=8000]
    python -m ddpm_lightning.demo [port=8000]

DIR is a site written by `python -m ddpm_lightning.export ckpt=PATH format=web out=DIR`
(ddpm_lightning.web.build_site). Without DIR it serves the shipped pretrained digits model
(ddpm_lightning/web/pretrained/digits), built into a temporary folder first. It listens on
127.0.0.1 (a free port unless port= is given), prints the URL, and stops on Ctrl-C.

Any static server works for a site; this one also sends the cross-origin isolation headers
(COOP/COEP) that let onnxruntime-web's WASM backend use several threads.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ddpm_lightning.errors import one_line_errors

HOST = "127.0.0.1"


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files with the MIME types the page needs and cross-origin isolation."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".json": "application/json"}

    def end_headers(self) -> None:
        # SharedArrayBuffer (WASM threads) needs a cross-origin isolated page
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # one line per file would bury the URL


def make_server(directory: str | Path, port: int = 0, host: str = HOST) -> ThreadingHTTPServer:
    """An HTTP server for `directory` (a site folder) on host:port (port 0: a free one)."""
    from ddpm_lightning.web import is_site

    path = Path(directory)
    if not is_site(path):
        raise FileNotFoundError(f"{str(path)!r} is not a demo site (no index.html/app.js/samplers.js); write one with "
                                "`python -m ddpm_lightning.export ckpt=PATH format=web out=DIR`")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    handler = functools.partial(SiteHandler, directory=str(path))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def parse_args(argv: list[str]) -> tuple[str | None, int]:
    """[DIR] [port=N] -> (DIR or None, port)."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        raise SystemExit(0)
    dirs = [a for a in argv if "=" not in a]
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(options) - {"port"})
    if unknown or len(dirs) > 1:
        raise ValueError(f"usage: python -m ddpm_lightning.demo [DIR] [port=N]; got {argv}")
    port = options.get("port", "0")
    if not port.isdigit():
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    return (dirs[0] if dirs else None), int(port)


def main(argv: list[str] | None = None) -> None:
    with one_line_errors():
        directory, port = parse_args(sys.argv[1:] if argv is None else argv)
        tmp = None
        if directory is None:
            from ddpm_lightning.web import PRETRAINED_DIGITS, build_site

            tmp = tempfile.TemporaryDirectory(prefix="ddpm-demo-")
            directory = str(build_site(tmp.name, PRETRAINED_DIGITS))
        server = make_server(directory, port)
    print(f"serving {directory} at http://{HOST}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
