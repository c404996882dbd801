"""uvicorn under our control: the bound address read back (port 0 works), the token kept out
of the access log, and a thread runner for tests and the benchmark."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import WS_PROTOCOLS

from marketcache.errors import StorageError
from marketcache.serve.auth import RedactTokens


class Server(uvicorn.Server):
    """A uvicorn server that says where it listens once it does (`on_ready(url)`)."""

    def __init__(
        self, config: uvicorn.Config, on_ready: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(config)
        self.on_ready = on_ready
        self.url = ""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            self.url = f"http://{host}:{port}"
            if self.on_ready is not None:
                self.on_ready(self.url)


def config(app: Any, host: str, port: int, *, access_log: bool = True) -> uvicorn.Config:
    cfg = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=access_log,
        log_level="info",
        lifespan="on",
        ws="websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    cfg.load()  # configures uvicorn's loggers; then the filter goes on the access logger
    for name in ("uvicorn.access", "uvicorn.error"):  # WebSocket handshakes log in the latter
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    return cfg


class ServerThread:
    """`with ServerThread(app) as url:` — a real uvicorn on 127.0.0.1, an ephemeral port, in a
    background thread; stopped (connections closed) on exit."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        self.server = Server(config(app, host, port, **kw))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise StorageError("the test server did not start")
            time.sleep(0.01)
        return self.server.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)
