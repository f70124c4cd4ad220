#!/usr/bin/env python3
"""Turns traffic recorded by relay.py into seed inputs for the fuzz targets.

    split_traffic.py TRAFFIC_DIR CORPUS_DIR

http_request: each connection's requests (at most 4, in the harness's `--next--` format), the
    live session id replaced by `{session}` and client `fuzz`'s token added, as the harness
    gateway requires one;
mcp_message:  every JSON body and every SSE `data:` payload, both directions;
sse_stream:   every SSE response body (de-chunked), after the harness's control byte.
Seed files are named seed-<sha1 prefix>; duplicates are dropped.
"""
import hashlib
import json
import os
import re
import sys

MAX_REQUESTS = 4


def messages(stream):
    """Splits an HTTP/1.1 byte stream into (head lines, body) pairs."""
    out = []
    while stream:
        end = stream.find(b"\r\n\r\n")
        if end < 0:
            break
        head = stream[:end].decode("latin-1").split("\r\n")
        rest = stream[end + 4:]
        headers = {h.split(":", 1)[0].lower(): h.split(":", 1)[1].strip() for h in head[1:] if ":" in h}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                line_end = rest.find(b"\r\n")
                if line_end < 0:
                    rest = b""
                    break
                size = int(rest[:line_end].split(b";")[0] or b"0", 16)
                rest = rest[line_end + 2:]
                if size == 0:
                    rest = rest[2:]
                    break
                body += rest[:size]
                rest = rest[size + 2:]
        else:
            n = int(headers.get("content-length", "0"))
            body, rest = rest[:n], rest[n:]
        out.append((head, headers, body))
        stream = rest
    return out


def save(corpus, target, data, seen):
    digest = hashlib.sha1(data).hexdigest()
    if (target, digest) in seen:
        return
    seen.add((target, digest))
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + digest[:16]), "wb") as f:
        f.write(data)


def sse_data(body):
    for event in re.split(rb"\r?\n\r?\n", body):
        data = [l[5:].lstrip(b" ") for l in event.splitlines() if l.startswith(b"data:")]
        if data:
            yield b"\n".join(data)


def main():
    traffic, corpus = sys.argv[1], sys.argv[2]
    seen = set()
    for name in sorted(os.listdir(traffic)):
        if not name.endswith(".up"):
            continue
        with open(os.path.join(traffic, name), "rb") as f:
            requests = messages(f.read())
        down = os.path.join(traffic, name[:-3] + ".down")
        with open(down, "rb") as f:
            responses = messages(f.read())
        texts = []
        for head, headers, body in requests[:MAX_REQUESTS]:
            lines = [head[0], head[1], "authorization: Bearer {token}"]
            for h in head[2:]:
                if h.lower().startswith("mcp-session-id:"):
                    h = "mcp-session-id: {session}"
                lines.append(h)
            texts.append("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        if texts:
            save(corpus, "http_request", b"\n--next--\n".join(texts), seen)
        for _, headers, body in requests + responses:
            ctype = headers.get("content-type", "")
            if ctype.startswith("application/json") and body:
                save(corpus, "mcp_message", body, seen)
            elif ctype.startswith("text/event-stream") and body:
                save(corpus, "sse_stream", b"\xff" + body, seen)
                for data in sse_data(body):
                    try:
                        json.loads(data)
                    except ValueError:
                        continue
                    save(corpus, "mcp_message", data, seen)


if __name__ == "__main__":
    main()
