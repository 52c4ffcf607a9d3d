"""Run the app under uvicorn on a socket bound before the (slow) model load and compilation.

Binding first turns "port in use" into an immediate error instead of one after a minute of compiling.
The ready line is printed only once uvicorn is accepting connections. SIGTERM and SIGINT shut the
server down gracefully, and then the process returns normally (exit status 0), as process managers and
test harnesses expect.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)

READY_POLL_S = 0.05


class PortInUseError(OSError):
    """The requested host:port cannot be bound."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise PortInUseError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(app: FastAPI, sock: socket.socket, ready_message: str, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT. uvicorn re-raises the signal after its graceful shutdown; the
    handlers installed here absorb it, so the caller can clean up and return."""
    config = uvicorn.Config(app, log_level=log_level.lower(), timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(_serve(server, sock, ready_message))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _serve(server: uvicorn.Server, sock: socket.socket, ready_message: str) -> None:
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(READY_POLL_S)
    if server.started:
        print(ready_message, flush=True)
    await serving
