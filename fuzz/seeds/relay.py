#!/usr/bin/env python3
"""A loopback TCP relay that records what passes through it, for fuzz seeds.

    relay.py LISTEN_PORT TARGET_PORT OUT_DIR

Every connection's client-to-server bytes go to OUT_DIR/NNNN.up and its server-to-client
bytes to OUT_DIR/NNNN.down. Loopback only, both sides.
"""
import os
import socket
import sys
import threading


def pump(src, dst, path):
    with open(path, "wb") as f:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            f.write(data)
            f.flush()
            try:
                dst.sendall(data)
            except OSError:
                break
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    listen_port, target_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.makedirs(out, exist_ok=True)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    n = 0
    while True:
        client, _ = server.accept()
        n += 1
        upstream = socket.create_connection(("127.0.0.1", target_port))
        base = os.path.join(out, f"{n:04d}")
        threading.Thread(target=pump, args=(client, upstream, base + ".up"), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, base + ".down"), daemon=True).start()


if __name__ == "__main__":
    main()
