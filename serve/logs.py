"""The server's logging: lines to stdout, the gateway's access lines marked ``[ACCESS]``
(``serve.gateway.Handler.log_access``; why MMS's own are off: ``serve/log4j2.xml``)."""

from __future__ import annotations

import logging
import sys

access_log = logging.getLogger("serve.access")


def configure() -> None:
    """Log lines to stdout, at INFO until the settings name a level; access lines at every
    level (as MMS's were), marked ``[ACCESS]`` as MMS marked its own."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s"
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s [ACCESS] %(message)s"))
    access_log.addHandler(handler)
    access_log.propagate = False
    access_log.setLevel(logging.INFO)
