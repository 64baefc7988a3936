"""serve.logs: the access lines' format, at every log level."""

from __future__ import annotations

import re
import subprocess
import sys


def test_access_lines_are_marked_and_outlive_a_higher_log_level():
    code = (
        "import logging\n"
        "from serve import logs\n"
        "logs.configure()\n"
        "logging.getLogger().setLevel('WARNING')  # SERVE_LOG_LEVEL=WARNING\n"
        "logging.getLogger('serve').info('an info line')\n"
        "logs.access_log.info('%s \"%s\" %d %.0f', '10.0.0.1', 'POST /invocations HTTP/1.1', 200, 31.4)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True).stdout
    assert re.fullmatch(r'\S+ \S+ \[ACCESS\] 10\.0\.0\.1 "POST /invocations HTTP/1\.1" 200 31\n', out), out
