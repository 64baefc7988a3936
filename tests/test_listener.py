"""serve.listener: the serving socket and uvicorn's protocol as the endpoint needs them."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from serve import listener
from tests.serving import free_port

REPO = Path(__file__).resolve().parents[1]


def test_connections_are_accepted_with_nagle_s_algorithm_off():
    """With it on, an answer's body waits for the client's delayed ACK: 40 ms a request."""
    sock = listener.bind(free_port())
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(accept_one())
    assert seen and seen[0] != 0


def test_the_uvicorn_internals_we_override_are_the_pinned_version_s():
    """GatewayProtocol overrides methods of uvicorn's H11Protocol that are not its public API:
    an upgrade fails here until they are read again (constraints.txt says why the pin)."""
    import importlib.metadata
    import inspect
    import re

    from uvicorn.protocols.http.h11_impl import H11Protocol

    pinned = re.search(r"^uvicorn==(\S+)", (REPO / "constraints.txt").read_text(), re.MULTILINE).group(1)
    assert importlib.metadata.version("uvicorn") == pinned == "0.54.0"
    for name in ("send_400_response", "handle_events", "on_response_complete", "connection_made", "connection_lost"):
        assert callable(getattr(H11Protocol, name))
    assert "self.send_400_response(msg)" in inspect.getsource(H11Protocol.handle_events)
    assert "self.conn.next_event()" in inspect.getsource(H11Protocol.handle_events)
