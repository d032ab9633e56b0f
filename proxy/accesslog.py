"""Access log: one line per request in Apache's common or combined format, or JSON lines.

The common and combined lines end with the duration in microseconds (Apache's `%D`).
"""

from __future__ import annotations

import json
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

USER_KEY = web.RequestKey("regproxy.user", str)
BYTES_KEY = web.RequestKey("regproxy.bytes", int)  # body bytes, set by the forwarder


class AccessLogger(AbstractAccessLogger):
    format = "common"

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        if self.format == "off":
            return
        user = request.get(USER_KEY) or "-"
        remote = request.remote or "-"
        sent = request.get(BYTES_KEY, response.content_length)
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        line = f"{request.method} {request.raw_path} {version}".replace('"', '\\"')
        micros = int(time_ * 1_000_000)
        if self.format == "json":
            self.logger.info(
                json.dumps(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "client": remote,
                        "user": user,
                        "method": request.method,
                        "path": request.raw_path,
                        "status": response.status,
                        "bytes": sent or 0,
                        "duration_ms": round(time_ * 1000, 3),
                        "user_agent": request.headers.get("User-Agent", ""),
                    }
                )
            )
            return
        size = sent or "-"
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        text = f'{remote} - {user} [{stamp}] "{line}" {response.status} {size}'
        if self.format == "combined":
            referer = request.headers.get("Referer", "-")
            agent = request.headers.get("User-Agent", "-")
            text += f' "{referer}" "{agent}"'
        self.logger.info(f"{text} {micros}")


def access_logger_class(fmt: str) -> type[AccessLogger]:
    """An AccessLogger subclass bound to one format (aiohttp instantiates it itself)."""
    return type("BoundAccessLogger", (AccessLogger,), {"format": fmt})
