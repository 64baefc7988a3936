"""The server's logging: lines to stdout, the access lines marked ``[ACCESS]``
(``serve.gateway.Exchange.log_access``; for requests too malformed to parse,
``serve.listener.GatewayProtocol.send_400_response``)."""

from __future__ import annotations

import logging
import sys

access_log = logging.getLogger("serve.access")


def configure() -> None:
    """Log lines to stdout, at INFO until the settings name a level; access lines at every
    level, marked ``[ACCESS]`` as MMS marked its own; uvicorn's own lines at warnings only."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s"
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s [ACCESS] %(message)s"))
    access_log.addHandler(handler)
    access_log.propagate = False
    access_log.setLevel(logging.INFO)
    # uvicorn's own: "Started server process", a warning per malformed request (its access line says it)
    logging.getLogger("uvicorn").setLevel(logging.ERROR)
