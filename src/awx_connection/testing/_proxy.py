"""
:class:`TcpProxy`: a store outage, on demand, between the library and a real database.

An outage of a few seconds (a failover, a network blip) is where a rotation
the provider already answered can be lost: the new tokens must be written
and the database does not answer. Stopping the real server would disturb
every other user of it; a proxy of our own in between can be cut and
restored at will, exactly when a test needs it. Cutting closes every
proxied connection at once (both directions) and refuses new ones until
:meth:`TcpProxy.restore`, which is what a client sees when a server or the
network between them goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Self, final

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024


@final
class TcpProxy:
    """
    Forward ``127.0.0.1:<port>`` to *target_host*:*target_port*, until cut.

    Use it as an async context manager; point the client at :attr:`port`::

        async with TcpProxy("127.0.0.1", 5432) as proxy:
            store = PostgresStore(f"postgresql://postgres@127.0.0.1:{proxy.port}/test", ...)
            ...
            proxy.cut()       # every connection drops; new ones are refused
            proxy.restore()   # accepted again
    """

    __slots__ = ("_pipes", "_server", "_target", "cuts", "up")

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        #: Whether connections are forwarded (``False`` between cut and restore).
        self.up = True
        #: How many times :meth:`cut` was called.
        self.cuts = 0

    @property
    def port(self) -> int:
        """The local port clients connect to."""
        assert self._server is not None, "start() the proxy first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def aclose(self) -> None:
        """Stop listening and drop every connection. Idempotent."""
        self._drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def cut(self) -> None:
        """Drop every proxied connection now and refuse new ones until :meth:`restore`."""
        self.up = False
        self.cuts += 1
        self._drop_all()

    def restore(self) -> None:
        """Forward new connections again."""
        self.up = True

    def _drop_all(self) -> None:
        for writer in tuple(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        if not self.up:  # cut while connecting upstream
            upstream_writer.transport.abort()
            writer.transport.abort()
            return
        self._pipes.update((writer, upstream_writer))
        await asyncio.gather(
            self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pipes.discard(writer)
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
