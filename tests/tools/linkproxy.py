#!/usr/bin/python3
"""linkproxy: a TCP proxy for tests that can cut, stall, restore and throttle
the link on command.

    linkproxy.py --listen 127.0.0.1:0 --target 127.0.0.1:PORT \\
                 --control PATH.sock --port-file PATH [--pidfile PATH]

Every connection accepted on --listen is forwarded to --target, both
directions, half-closes passed on.  Once ready it writes its pid to
--pidfile and then the real listening port to --port-file (each written
atomically, port file last: a test waits for it).

The control socket is a Unix stream socket; each line is one command and
gets one line back, "ok ..." or "error ...":

    cut         close every connection now (both sides, RST: SO_LINGER 0)
                and close new ones as soon as they are accepted, until
                restore.
    stall       stop forwarding in both directions: connections stay open,
                nothing is read (so the senders' windows fill up), new
                connections are accepted but not connected to the target,
                until restore or cut.  Bytes already handed to the kernel
                before the stall (at most one chunk per direction) still
                arrive.
    restore     back to normal forwarding.
    throttle N  at most N bytes per second per direction, summed over all
                connections (a token bucket); throttle 0 removes the limit.
    status      ok {"state": "normal|cut|stalled", "connections": N,
                    "bytes_up": N, "bytes_down": N, "accepted": N,
                    "refused": N, "throttle": N}
                (one line; up = client to target, counted when forwarded;
                accepted includes the connections refused while cut;
                connections are the client connections open now).
    quit        reply, then exit 0.

SIGTERM and SIGINT exit 0.  Memory stays bounded: each direction reads at
most one chunk (64 KiB, less when throttled) and waits for the write side to
drain before reading more.  Standard library only; events go to stderr.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time

CHUNK = 64 * 1024


def log(msg):
    t = time.time()
    sys.stderr.write("linkproxy[%d] %s.%03d %s\n" % (
        os.getpid(), time.strftime("%H:%M:%S", time.localtime(t)),
        int(t * 1000) % 1000, msg))
    sys.stderr.flush()


def parse_hostport(s):
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("%r is not HOST:PORT" % s)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


def write_atomic(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def set_nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def reset(writer):
    """Close a connection at once with a RST (SO_LINGER 0)."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class Cut(Exception):
    """The link was cut while a pump waited."""


class Bucket:
    """Token bucket for one direction; tokens may go negative (debt)."""

    def __init__(self):
        self.tokens = 0.0
        self.last = time.monotonic()

    def refill(self, rate, burst):
        now = time.monotonic()
        self.tokens = min(float(burst), self.tokens + (now - self.last) * rate)
        self.last = now


class Conn:
    def __init__(self, num, client):
        self.num = num
        self.client = client
        self.upstream = None
        self.task = None

    def reset(self):
        reset(self.client)
        reset(self.upstream)


class Proxy:
    def __init__(self, args):
        self.args = args
        self.target = args.target
        self.state = "normal"
        self.rate = 0
        self.up = Bucket()
        self.down = Bucket()
        self.bytes_up = 0
        self.bytes_down = 0
        self.accepted = 0
        self.refused = 0
        self.conns = set()
        self.wake = asyncio.Event()
        self.done = asyncio.Event()

    # ---- state changes wake every waiting pump ----

    def changed(self):
        self.wake.set()
        self.wake = asyncio.Event()

    def read_size(self):
        if self.rate:
            # about 1/20 s worth of bytes per read
            return max(1, min(CHUNK, self.rate // 20))
        return CHUNK

    def burst(self):
        return self.read_size()

    async def wait_flowing(self):
        while self.state == "stalled":
            await self.wake.wait()
        if self.state == "cut":
            raise Cut()

    async def consume(self, bucket, n):
        if not self.rate:
            return
        bucket.refill(self.rate, self.burst())
        bucket.tokens -= n
        while True:
            await self.wait_flowing()
            if not self.rate:
                return
            bucket.refill(self.rate, self.burst())
            if bucket.tokens >= 0:
                return
            try:
                await asyncio.wait_for(self.wake.wait(),
                                       -bucket.tokens / self.rate)
            except asyncio.TimeoutError:
                pass

    # ---- forwarding ----

    async def pump(self, reader, writer, bucket, up):
        while True:
            await self.wait_flowing()
            data = await reader.read(self.read_size())
            if not data:
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
                return
            await self.wait_flowing()
            await self.consume(bucket, len(data))
            writer.write(data)
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            await writer.drain()

    async def handle(self, creader, cwriter):
        self.accepted += 1
        num = self.accepted
        peer = cwriter.get_extra_info("peername")
        if self.state == "cut":
            self.refused += 1
            log("#%d from %s refused: link is cut" % (num, peer))
            reset(cwriter)
            return
        conn = Conn(num, cwriter)
        conn.task = asyncio.current_task()
        self.conns.add(conn)
        graceful = False
        try:
            set_nodelay(cwriter)
            if self.state == "stalled":
                log("#%d from %s accepted, stalled" % (num, peer))
            await self.wait_flowing()
            try:
                ureader, uwriter = await asyncio.open_connection(*self.target)
            except OSError as e:
                log("#%d from %s: cannot connect to %s:%d: %s" % (
                    num, peer, self.target[0], self.target[1], e))
                return
            conn.upstream = uwriter
            set_nodelay(uwriter)
            log("#%d from %s connected to %s:%d" % (
                num, peer, self.target[0], self.target[1]))
            pumps = {
                asyncio.ensure_future(
                    self.pump(creader, uwriter, self.up, True)),
                asyncio.ensure_future(
                    self.pump(ureader, cwriter, self.down, False)),
            }
            try:
                done, pending = await asyncio.wait(
                    pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for t in pumps:
                    t.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            errors = [t.exception() for t in done
                      if not t.cancelled() and t.exception() is not None]
            if errors:
                e = errors[0]
                if not isinstance(e, Cut):
                    log("#%d closed: %s" % (num, e or type(e).__name__))
            else:
                graceful = True
                log("#%d closed by both ends" % num)
        except Cut:
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.conns.discard(conn)
            if graceful:
                cwriter.close()
                if conn.upstream is not None:
                    conn.upstream.close()
            else:
                conn.reset()

    def cut_all(self):
        n = len(self.conns)
        for conn in list(self.conns):
            conn.reset()
            if conn.task is not None:
                conn.task.cancel()
        self.conns.clear()
        return n

    # ---- control ----

    def status(self):
        return json.dumps({
            "state": self.state,
            "connections": len(self.conns),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "accepted": self.accepted,
            "refused": self.refused,
            "throttle": self.rate,
        })

    def command(self, line):
        words = line.split()
        if not words:
            return "error empty command"
        cmd, rest = words[0].lower(), words[1:]
        if cmd != "throttle" and rest:
            return "error %s takes no arguments" % cmd
        if cmd == "cut":
            self.state = "cut"
            n = self.cut_all()
            self.changed()
            return "ok cut, %d connection%s reset" % (n, "" if n == 1 else "s")
        if cmd == "stall":
            self.state = "stalled"
            self.changed()
            return "ok stalled, %d connection%s held" % (
                len(self.conns), "" if len(self.conns) == 1 else "s")
        if cmd == "restore":
            self.state = "normal"
            self.changed()
            return "ok normal"
        if cmd == "throttle":
            if len(rest) != 1 or not rest[0].isdigit():
                return "error usage: throttle BYTES_PER_SEC (0: no limit)"
            rate = int(rest[0])
            old = self.rate
            self.rate = rate
            if rate and not old:
                # start with a full (small) bucket
                for b in (self.up, self.down):
                    b.tokens = float(self.burst())
                    b.last = time.monotonic()
            self.changed()
            return "ok throttle %d" % rate
        if cmd == "status":
            return "ok " + self.status()
        if cmd == "quit":
            self.done.set()
            return "ok quitting"
        return "error unknown command %r" % words[0]

    async def control(self, reader, writer):
        try:
            while not self.done.is_set():
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b"error line too long\n")
                    break
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip()
                reply = self.command(text)
                if not text.startswith("status"):
                    log("control: %s -> %s" % (text, reply))
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    # ---- main ----

    async def run(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.done.set)
        host, port = self.args.listen
        server = await asyncio.start_server(self.handle, host, port)
        real_port = server.sockets[0].getsockname()[1]
        ctl_path = self.args.control
        try:
            os.unlink(ctl_path)
        except FileNotFoundError:
            pass
        control = await asyncio.start_unix_server(self.control, ctl_path)
        if self.args.pidfile:
            write_atomic(self.args.pidfile, "%d\n" % os.getpid())
        write_atomic(self.args.port_file, "%d\n" % real_port)
        log("listening on %s:%d, forwarding to %s:%d, control %s" % (
            host, real_port, self.target[0], self.target[1], ctl_path))
        await self.done.wait()
        log("exiting")
        server.close()
        control.close()
        self.cut_all()
        try:
            os.unlink(ctl_path)
        except FileNotFoundError:
            pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=parse_hostport, required=True,
                   help="HOST:PORT to accept on (port 0: any free port)")
    p.add_argument("--target", type=parse_hostport, required=True,
                   help="HOST:PORT to forward to")
    p.add_argument("--control", required=True,
                   help="Unix socket for commands")
    p.add_argument("--port-file", required=True,
                   help="file to write the real listening port to when ready")
    p.add_argument("--pidfile", help="file to write the pid to when ready")
    args = p.parse_args()
    asyncio.run(Proxy(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
