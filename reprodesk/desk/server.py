"""The desk's HTTP server: uvicorn on a socket we bind, in the foreground or a thread."""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

from reprodesk.desk.app import Desk, new_token


class DeskServer:
    """`Desk` over `app`, served on `host:port` (0: any free port)."""

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)  # connections queue from now on: the printed URL works at once
        self.host, self.port = host, int(self.sock.getsockname()[1])
        names = {self.host, "127.0.0.1", "localhost"} if host == "127.0.0.1" else {self.host}
        self.desk = Desk(app, token or new_token(), hosts={f"{n}:{self.port}" for n in names})
        config = uvicorn.Config(
            self.desk.asgi(), log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """What to open: the token travels once, then lives in a cookie."""
        return f"{self.base}/?token={self.desk.token}"

    def serve(self) -> None:
        """In the foreground, until Ctrl-C."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.desk.drivers.join(timeout=60)

    def start(self) -> DeskServer:
        self._thread = threading.Thread(target=self.serve, name="desk-server", daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            self._thread.join(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> DeskServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
