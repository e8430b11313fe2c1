"""Shared pytest fixtures (keep this file small and generic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_path() -> Path:
    """``$FEDREC_DATA`` if set, else ``<repo>/../shared/data``."""
    value = os.environ.get("FEDREC_DATA")
    return Path(value).expanduser() if value else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real-data root (laid out like the project's shared data), or skip the test."""
    path = real_data_path()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set FEDREC_DATA)")
    return path


class _Server:
    """A loopback HTTP server serving files under ``root``; ``requests`` logs the paths."""

    def __init__(self, root: Path) -> None:
        import functools
        import http.server
        import threading

        self.root = root
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                log.append(self.path)
                super().do_GET()

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def put(self, path: str, data: bytes) -> Path:
        """Serve ``data`` at URL path ``path``."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path: Path):
    """A loopback HTTP server (127.0.0.1, free port) serving a fresh temporary folder.

    ``server.put("/a/b.txt", data)`` publishes a file; ``server.url`` is the base URL;
    ``server.requests`` lists the requested paths.
    """
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(root)
    yield server
    server.close()
