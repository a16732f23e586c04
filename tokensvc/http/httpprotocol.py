"""uvicorn's httptools protocol with a deadline for the request line and headers.

uvicorn closes connections that sit idle *between* requests (`keep_alive_timeout`), and the
service bounds the body (`request_timeout`, 408). Nothing bounds the time before the headers
are complete: a client that connects and sends nothing, or sends its headers a byte at a time,
holds a connection (and its memory) for ever, and enough of them exhaust the server. Here a
connection must deliver a complete request head within `request_timeout` seconds of opening,
and of starting each further request, or it is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokensvc.settings import Settings


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """Closes a connection whose request head has not arrived in time."""

    # Set from the settings by create_app() (`configure`), which uvicorn runs in every worker
    # before it accepts a connection: the one way the setting reaches the protocol.
    header_seconds: float = Settings().request_timeout
    _deadline: asyncio.TimerHandle | None = None

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.header_seconds = settings.request_timeout

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self.transport.close()
