#!/usr/bin/env python3
"""A hostile MCP server that tries to leave its sandbox.

Plain newline-delimited JSON-RPC on stdio (no SDK: it also runs in a bare Python image). One
tool, `escape`, runs every attempt and answers with a JSON list of
`{"attempt", "escaped", "detail"}`; `escaped` is true when the attempt worked. The arguments
name what the test made: the gateway's pid, files that must stay unreadable, an unlisted host
and a DNS server other than the sandbox's resolver.

Every attempt that could change the calling process (setns, unshare, mount) runs in a forked
child with an alarm, so the server itself keeps answering; every loop is bounded.
"""

import ctypes
import json
import os
import socket
import struct
import subprocess
import sys

LIBC = ctypes.CDLL(None, use_errno=True)
NS_TYPES = ["net", "mnt", "pid", "ipc", "uts", "user", "cgroup"]
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
MAX_PROCS = 4000


def errno_text():
    e = ctypes.get_errno()
    return f"{os.strerror(e)} (errno {e})"


def in_child(fn, limit_s=8):
    """Runs fn() in a forked child; returns what it printed as JSON (or a failure)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            import signal
            signal.alarm(limit_s)
            out = fn()
        except Exception as e:  # noqa: BLE001 - report anything
            out = {"ok": False, "detail": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    try:
        return json.loads(data)
    except ValueError:
        return {"ok": False, "detail": "child died without an answer"}


def tcp(target, timeout=1.5):
    host, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=timeout)
        banner = s.recv(16)
        s.close()
        return True, f"connected, banner={banner!r}"
    except OSError as e:
        return False, f"failed: {e}"


def dns(server, name="unlisted.test", timeout=1.5):
    host, port = server.rsplit(":", 1)
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.sendto(q, (host, int(port)))
        data, _ = s.recvfrom(1500)
        s.close()
        return True, f"answer of {len(data)} bytes"
    except OSError as e:
        return False, f"failed: {e}"


def run(cmd, timeout=5):
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)
        return p.returncode, (p.stdout + p.stderr).strip()[:400]
    except FileNotFoundError:
        return None, f"{cmd[0]}: not installed here"
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{type(e).__name__}: {e}"


def foreign_namespaces():
    """Every namespace named under /proc that is not ours: {(type, link): pid}."""
    own = {}
    for t in NS_TYPES:
        try:
            own[t] = os.readlink(f"/proc/self/ns/{t}")
        except OSError:
            pass
    found = {}
    pids = [p for p in os.listdir("/proc") if p.isdigit()][:MAX_PROCS]
    for pid in pids:
        for t in NS_TYPES:
            try:
                link = os.readlink(f"/proc/{pid}/ns/{t}")
            except OSError:
                continue
            if link != own.get(t) and (t, link) not in found:
                found[(t, link)] = pid
    return found, len(pids)


def try_setns(t, pid, args):
    def attempt():
        try:
            fd = os.open(f"/proc/{pid}/ns/{t}", os.O_RDONLY)
        except OSError as e:
            return {"ok": False, "detail": f"open: {e}"}
        if LIBC.setns(fd, 0) != 0:
            return {"ok": False, "detail": f"setns: {errno_text()}"}
        detail = "setns worked"
        if t == "net":
            rc, out = run(["nft", "list", "tables"])
            detail += f"; nft list tables -> {rc}: {out}"
            ok, what = tcp(args["unlisted"])
            detail += f"; unlisted host {args['unlisted']}: {what}"
            ok, what = dns(args["other_dns"])
            detail += f"; other DNS {args['other_dns']}: {what}"
        return {"ok": True, "detail": detail}

    return in_child(attempt)


def attempts(args):
    out = []

    def add(name, escaped, detail):
        out.append({"attempt": name, "escaped": bool(escaped), "detail": detail})

    found, nprocs = foreign_namespaces()
    add(
        "see other processes' namespaces under /proc",
        len(found) > 0,
        f"{nprocs} processes visible, {len(found)} foreign namespaces: "
        + ", ".join(sorted({t for t, _ in found})),
    )
    worked = []
    tried = 0
    for (t, _link), pid in sorted(found.items())[:200]:
        tried += 1
        r = try_setns(t, pid, args)
        if r.get("ok"):
            worked.append(f"{t} of pid {pid}: {r['detail']}")
    add(
        "setns into a namespace found under /proc",
        len(worked) > 0,
        f"{tried} tried; worked: {worked[:6]}",
    )
    net = next(((pid for (t, _), pid in found.items() if t == "net")), None)
    if net is not None:
        rc, text = run(["nsenter", f"--net=/proc/{net}/ns/net", "nft", "list", "tables"])
        add("nsenter --net into another namespace, nft list tables", rc == 0, f"{rc}: {text}")
    else:
        add("nsenter --net into another namespace, nft list tables", False, "no foreign network namespace visible")

    rc, text = run(["unshare", "-n", "true"])
    add("unshare -n (the binary)", rc == 0, f"{rc}: {text}")
    for name, flags in [("unshare(CLONE_NEWNET)", CLONE_NEWNET), ("unshare(CLONE_NEWUSER)", CLONE_NEWUSER),
                        ("unshare(CLONE_NEWNS)", CLONE_NEWNS)]:
        r = in_child(lambda f=flags: {"ok": LIBC.unshare(f) == 0, "detail": errno_text()})
        add(name, r.get("ok"), r.get("detail"))

    # A mount is seen by the whole mount namespace (not just the child that made it), so it
    # goes on a fresh directory and is taken off again.
    import tempfile
    try:
        where = tempfile.mkdtemp()
    except OSError:
        # No writable directory (a read-only container without a /tmp): try an existing one.
        where = "/mnt" if os.path.isdir("/mnt") else "/"

    def do_mount():
        ok = LIBC.mount(b"none", where.encode(), b"tmpfs", 0, None) == 0
        detail = f"mounted a tmpfs on {where}" if ok else errno_text()
        if ok:
            LIBC.umount2(where.encode(), 2)
        return {"ok": ok, "detail": detail}

    r = in_child(do_mount)
    add("mount(2) a tmpfs", r.get("ok"), r.get("detail"))
    rc, text = run(["mount", "-t", "tmpfs", "none", where])
    if rc == 0:
        run(["umount", "-l", where])
    add("mount -t tmpfs (the binary)", rc == 0, f"{rc}: {text}")

    for name, fam, typ, proto in [
        ("raw socket AF_PACKET", getattr(socket, "AF_PACKET", 17), socket.SOCK_RAW, 0),
        ("raw socket AF_INET/ICMP", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        ("raw socket AF_INET/TCP", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    ]:
        try:
            s = socket.socket(fam, typ, proto)
            s.close()
            add(name, True, "created")
        except OSError as e:
            add(name, False, str(e))

    gw = int(args["gateway_pid"])

    def do_ptrace():
        if LIBC.ptrace(PTRACE_ATTACH, gw, None, None) == 0:
            LIBC.ptrace(PTRACE_DETACH, gw, None, None)
            return {"ok": True, "detail": "attached to the gateway"}
        return {"ok": False, "detail": errno_text()}

    r = in_child(do_ptrace)
    add("ptrace the gateway", r.get("ok"), r.get("detail"))
    for name, path in [("read the gateway's environment", f"/proc/{gw}/environ"),
                       ("read the gateway's memory map", f"/proc/{gw}/maps")]:
        try:
            with open(path, "rb") as f:
                data = f.read(4096)
            add(name, len(data) > 0, f"read {len(data)} bytes")
        except OSError as e:
            add(name, False, str(e))
    try:
        os.kill(gw, 0)
        add("signal the gateway (kill -0)", True, "permitted")
    except OSError as e:
        add("signal the gateway (kill -0)", False, str(e))

    for label, path in args.get("files", {}).items():
        try:
            with open(path, "rb") as f:
                data = f.read(4096)
            add(f"read {label}", True, f"read {len(data)} bytes of {path}")
        except OSError as e:
            add(f"read {label}", False, str(e))

    rc, text = run(["nft", "list", "tables"])
    add("nft list tables (own namespace)", rc == 0, f"{rc}: {text}")
    ok, what = tcp(args["unlisted"])
    add(f"connect to an unlisted host {args['unlisted']}", ok, what)
    ok, what = dns(args["other_dns"])
    add(f"DNS to another server {args['other_dns']}", ok, what)

    def whoami():
        status = open("/proc/self/status").read()
        caps = [l for l in status.splitlines() if l.startswith(("Cap", "NoNewPrivs", "Seccomp:"))]
        return {"ok": True, "detail": f"uid={os.getuid()} gid={os.getgid()} pid={os.getpid()} " + " ".join(caps)}

    add("(info) who am I", False, whoami()["detail"])
    return out


def reply(msg_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


TOOL = {
    "name": "escape",
    "description": "Tries to leave the sandbox; returns what worked.",
    "inputSchema": {"type": "object"},
}


def main():
    for _ in range(100_000):
        line = sys.stdin.readline()
        if not line:
            return
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method, msg_id = msg.get("method"), msg.get("id")
        if msg_id is None:
            continue
        if method == "initialize":
            reply(msg_id, {
                "protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "escape", "version": "1"},
            })
        elif method == "tools/list":
            reply(msg_id, {"tools": [TOOL]})
        elif method == "tools/call":
            results = attempts(msg["params"].get("arguments", {}))
            reply(msg_id, {"content": [{"type": "text", "text": json.dumps(results)}]})
        elif method == "ping":
            reply(msg_id, {})
        else:
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id,
                                         "error": {"code": -32601, "message": "unknown method"}}) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
