"""A minimal OpenAI-compatible streaming server with scripted token timings and injected faults.

Run as a process (``python tests/servers/scripted.py --ttft 0.1 --itl 0.02``); it prints
``PORT <n>`` on stdout once listening on 127.0.0.1. Token k of a response is sent at the absolute
deadline  t_request + ttft + k·itl  (monotonic clock), so sleep overshoot under load does not
accumulate: the mean measured TTFT and inter-token gap converge to the scripted values.

``--faults ok,http500,disconnect,...`` assigns a behaviour to each measured request by the index
in its ``X-Request-Id: RUN/IDX`` header (``plan[idx % len(plan)]``); requests without an index
(preflight, warm-up) always succeed. ``GET /stats`` reports requests seen, in-flight maximum and
time-weighted mean concurrency, so a harness's real concurrency can be checked from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time

FAULTS = ("ok", "http500", "http503", "disconnect", "stall", "malformed", "broken", "badsse")


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self.area = 0.0
        self.t_first: float | None = None
        self.t_last = 0.0
        self.seen: dict[str, int] = {}
        # What the server really did, on its own monotonic clock: time from reading a request
        # to writing its first token, and the mean gap between its first and last token writes.
        self.sent_ttft: list[float] = []
        self.sent_gap: list[float] = []

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        else:
            self.area += self.inflight * (now - self.t_last)
        self.t_last = now

    def enter(self, rid: str) -> None:
        self._tick()
        self.requests += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.seen[rid] = self.seen.get(rid, 0) + 1

    def leave(self) -> None:
        self._tick()
        self.inflight -= 1

    def report(self) -> dict:
        span = (self.t_last - self.t_first) if self.t_first is not None else 0.0
        def mean(v: list[float]) -> float | None:
            return sum(v) / len(v) if v else None

        return {"requests": self.requests, "max_inflight": self.max_inflight,
                "mean_inflight": self.area / span if span > 0 else 0.0, "span_s": span,
                "sent_ttft_mean_s": mean(self.sent_ttft), "sent_gap_mean_s": mean(self.sent_gap),
                "seen": self.seen}


class Server:
    def __init__(self, ttft: float, itl: float, faults: list[str], close: bool, usage: bool,
                 burst: int, stall_s: float) -> None:
        self.ttft, self.itl, self.faults = ttft, itl, faults
        self.close_after, self.usage, self.burst, self.stall_s = close, usage, burst, stall_s
        self.stats = Stats()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        arrival = [loop.time()]
        feed = reader.feed_data

        def stamped_feed(data: bytes) -> None:
            # The script runs from the moment a request's first bytes arrive, not from when this
            # coroutine gets to parse it: with 256 requests landing at once, parsing queues.
            if not reader._buffer:  # type: ignore[attr-defined]
                arrival[0] = loop.time()
            feed(data)

        reader.feed_data = stamped_feed  # type: ignore[method-assign]
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                t_req = arrival[0]
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = [*lines[0].split(" "), "", ""][:3]
                hdr = {}
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    hdr[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(hdr.get("content-length", "0") or 0))
                keep = await self.route(method, path, hdr, body, writer, t_req)
                if not keep or self.close_after:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def route(self, method: str, path: str, hdr: dict, body: bytes,
                    writer: asyncio.StreamWriter, t_req: float) -> bool:
        if method == "GET" and path == "/stats":
            return await self.plain(writer, 200, self.stats.report())
        if method == "POST" and path == "/stats/reset":
            self.stats.reset()
            return await self.plain(writer, 200, {"reset": True})
        if method == "GET" and path in ("/v1/models", "/health"):
            return await self.plain(writer, 200, {"object": "list", "data": [
                {"id": "scripted", "object": "model", "owned_by": "moatmeter-tests"}]})
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions",
                                            "/api/generate"):
            return await self.plain(writer, 404, {"error": f"no route {method} {path}"})
        try:
            req = json.loads(body)
        except ValueError:
            return await self.plain(writer, 400, {"error": "body is not JSON"})
        rid = hdr.get("x-request-id", "")
        idx_s = rid.rsplit("/", 1)[-1] if "/" in rid else ""
        fault = self.faults[int(idx_s) % len(self.faults)] if idx_s.isdigit() else "ok"
        self.stats.enter(rid)
        try:
            if path == "/api/generate":
                return await self.ollama(req, writer, t_req)
            return await self.stream(req, path.endswith("chat/completions"), fault, writer, t_req)
        finally:
            self.stats.leave()

    async def plain(self, writer: asyncio.StreamWriter, status: int, obj: dict) -> bool:
        data = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        return True

    @staticmethod
    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    @staticmethod
    @functools.lru_cache(maxsize=8192)
    def event(chat: bool, k: int, fin: str | None = None) -> bytes:
        """Pre-encoded (cached) so that serving 256 streams costs the server little CPU."""
        if chat:
            choice = {"index": 0, "delta": {"content": f" t{k}"}, "finish_reason": fin}
            obj = {"id": "x", "object": "chat.completion.chunk", "choices": [choice]}
        else:
            choice = {"index": 0, "text": f" t{k}", "finish_reason": fin}
            obj = {"id": "x", "object": "text_completion", "choices": [choice]}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    async def ollama(self, req: dict, writer: asyncio.StreamWriter, t_req: float) -> bool:
        """Ollama's native /api/generate: NDJSON lines, token counts in the final object."""
        loop = asyncio.get_running_loop()
        n = max(1, int((req.get("options") or {}).get("num_predict") or 16))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for k in range(n):
            delay = t_req + self.ttft + k * self.itl - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            line = {"model": req.get("model"), "response": f" t{k}", "done": False}
            writer.write(self.chunk(json.dumps(line).encode() + b"\n"))
            await writer.drain()
        final = {"model": req.get("model"), "response": "", "done": True, "eval_count": n,
                 "prompt_eval_count": len(str(req.get("prompt", "")).split())}
        writer.write(self.chunk(json.dumps(final).encode() + b"\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    async def stream(self, req: dict, chat: bool, fault: str, writer: asyncio.StreamWriter,
                     t_req: float) -> bool:
        loop = asyncio.get_running_loop()
        if fault in ("http500", "http503"):
            return await self.plain(writer, int(fault[4:]), {"error": f"injected {fault}"})
        if fault == "disconnect":
            writer.transport.abort()
            return False
        n = max(1, int(req.get("max_tokens") or 16))
        t_first = t_req
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for k in range(n):
            delay = t_req + self.ttft + k * self.itl - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if fault == "stall" and k == 1:
                await asyncio.sleep(self.stall_s)
                return False
            if fault == "broken" and k == 2:
                writer.transport.abort()
                return False
            if fault == "malformed" and k == 2:
                writer.write(self.chunk(b'data: {"choices": [{"text": "oops"\n\n'))
                await writer.drain()
                continue
            if fault == "badsse" and k == 2:
                writer.write(self.chunk(b"this is not an event stream\n\n"))
                await writer.drain()
                continue
            data = self.event(chat, k, "length" if k == n - 1 else None)
            if self.burst > 1:  # several events in one write: they arrive in one read
                data = b"".join(self.event(chat, k) for _ in range(self.burst - 1)) + data
            writer.write(self.chunk(data))
            if k == 0:
                t_first = loop.time()
            if writer.transport.get_write_buffer_size() > 1 << 16:
                await writer.drain()
        t_last = loop.time()
        if fault == "ok":
            self.stats.sent_ttft.append(t_first - t_req)
            if n > 1:
                self.stats.sent_gap.append((t_last - t_first) / (n - 1))
        tail = b""
        if self.usage:
            n_out = n * max(1, self.burst)
            usage = {"prompt_tokens": len(str(req.get("prompt", req.get("messages", ""))).split()),
                     "completion_tokens": n_out, "total_tokens": 0}
            tail += b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
        tail += b"data: [DONE]\n\n"
        writer.write(self.chunk(tail) + b"0\r\n\r\n")
        await writer.drain()
        return True


def _report_cpu(*_: object) -> None:
    import os

    t = os.times()
    print(f"CPU {t.user + t.system:.3f}", flush=True)
    os._exit(0)


async def amain(args: argparse.Namespace) -> None:
    import signal

    signal.signal(signal.SIGTERM, _report_cpu)
    faults = args.faults.split(",")
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        sys.exit(f"unknown faults {bad}; known {FAULTS}")
    srv = Server(args.ttft, args.itl, faults, args.close, not args.no_usage, args.burst,
                 args.stall)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ttft", type=float, default=0.05, help="seconds to the first token")
    ap.add_argument("--itl", type=float, default=0.01, help="seconds between tokens")
    ap.add_argument("--faults", default="ok")
    ap.add_argument("--stall", type=float, default=30.0, help="seconds a 'stall' hangs")
    ap.add_argument("--burst", type=int, default=1, help="events per write (coalescing test)")
    ap.add_argument("--close", action="store_true", help="close after each response")
    ap.add_argument("--no-usage", action="store_true", help="do not report usage")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
