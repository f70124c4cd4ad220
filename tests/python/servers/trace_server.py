"""A stdio MCP server on the Python SDK 2.3 that reports the trace context it received.

    python trace_server.py

The SDK's own `OpenTelemetryMiddleware` (on by default) reads `traceparent` from the request's
`_meta` and starts the request's span under it. With the OpenTelemetry API alone (no SDK, no
exporter) that span is non-recording and carries the received context as is, so the tool's
current span says exactly which trace and parent span the SDK took from the request.

Tool `traceparent`: that context as a W3C `traceparent`, or `none` when the SDK found none.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from opentelemetry import trace

server = MCPServer("trace-test")


@server.tool()
def traceparent() -> str:
    """The trace context the SDK took from this request, as a traceparent."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return "none"
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


server.run("stdio")
