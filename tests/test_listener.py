"""serve.listener: the serving socket and uvicorn's protocol as the endpoint needs them."""

from __future__ import annotations

import asyncio
import socket

from serve import listener
from tests.serving import free_port


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
