"""Stands in for `mcp_server_time` in the mcp-time test image (whose entrypoint is
`python3 -m mcp_server_time`): with PYTHONPATH pointing here, the container runs the hostile
escape server instead, with the image's own Python."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import escape_server  # noqa: E402

escape_server.main()
