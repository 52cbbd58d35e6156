#!/usr/bin/env python3
"""Flooders for scripts/bench/floods (issue 19, item 3). Standard library only.

Opens IDLE keep-alive connections that each make one request (a small chat
completion) and then sit idle, and SLOW slowloris connections that trickle an
endless request head one byte every INTERVAL seconds; a slowloris the server
cuts is counted (with how long after its first byte, and whether the server
answered 408 first) and replaced by a new one, so SLOW stay open. Runs until
SIGTERM or SIGINT (or --duration), then prints one JSON line of counts.
Loopback only. `ulimit -n` must allow IDLE + SLOW descriptors.

  floods.py --port P --idle 10000 --slow 2000 --ready FILE
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time

BODY = b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}'


def chat_request(key: str) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
        + f"authorization: Bearer {key}\r\n".encode()
        + b"content-type: application/json\r\n"
        + f"content-length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )


async def read_response(reader: asyncio.StreamReader) -> int:
    """Reads one whole response; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            await reader.readexactly(size + 2)
    return status


class Stats:
    def __init__(self):
        self.idle_opened = 0
        self.idle_failed = 0
        self.idle_bad_status = 0
        self.idle_closed_by_server = 0
        self.slow_opened = 0
        self.slow_failed = 0
        self.slow_cut = 0
        self.slow_cut_with_408 = 0
        self.slow_cut_after = []  # seconds from first byte to the cut
        self.slow_bytes = 0


async def idle_conn(args, stats: Stats, gate: asyncio.Semaphore, stop: asyncio.Event, held: list):
    async with gate:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            writer.write(chat_request(args.key))
            status = await asyncio.wait_for(read_response(reader), 30)
        except Exception:
            stats.idle_failed += 1
            return
    if status != 200:
        stats.idle_bad_status += 1
    stats.idle_opened += 1
    held.append(writer)
    # Sit idle; a read that ends before the stop is the server closing it.
    reader_task = asyncio.ensure_future(reader.read(1))
    stop_task = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({reader_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if reader_task in done:
        stats.idle_closed_by_server += 1
    reader_task.cancel()
    stop_task.cancel()


async def slow_conn(args, stats: Stats, stop: asyncio.Event, first_delay: float):
    await asyncio.sleep(first_delay)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
    pad = b"x-slow: " + b"a" * 56 + b"\r\n"  # an endless run of these
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        except Exception:
            stats.slow_failed += 1
            await asyncio.sleep(args.interval)
            continue
        stats.slow_opened += 1
        got = bytearray()

        async def watch():
            while True:
                b = await reader.read(4096)
                if not b:
                    return
                got.extend(b)

        watcher = asyncio.ensure_future(watch())
        started = time.monotonic()
        i = 0
        cut = False
        while not stop.is_set():
            byte = head[i : i + 1] if i < len(head) else pad[(i - len(head)) % len(pad) :][:1]
            try:
                writer.write(byte)
                await writer.drain()
                stats.slow_bytes += 1
            except Exception:
                cut = True
                break
            i += 1
            try:
                await asyncio.wait_for(asyncio.shield(watcher), args.interval)
                cut = True  # the server answered and closed
                break
            except asyncio.TimeoutError:
                pass
            except Exception:
                cut = True  # reset
                break
        if cut:
            if not watcher.done():
                try:
                    await asyncio.wait_for(watcher, 1)
                except Exception:
                    pass
            stats.slow_cut += 1
            stats.slow_cut_after.append(time.monotonic() - started)
            if bytes(got).startswith(b"HTTP/1.1 408"):
                stats.slow_cut_with_408 += 1
        watcher.cancel()
        writer.close()


async def main(args):
    stats = Stats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    held = []
    gate = asyncio.Semaphore(args.open_concurrency)
    t0 = time.monotonic()
    idle = [asyncio.ensure_future(idle_conn(args, stats, gate, stop, held)) for _ in range(args.idle)]
    # Idle connections first (they each make a request), then the slowloris
    # ones, spread over one interval.
    while stats.idle_opened + stats.idle_failed < args.idle:
        await asyncio.sleep(0.05)
    idle_ready = time.monotonic() - t0
    slow = [
        asyncio.ensure_future(slow_conn(args, stats, stop, args.interval * n / max(args.slow, 1)))
        for n in range(args.slow)
    ]
    while stats.slow_opened + stats.slow_failed < args.slow and not stop.is_set():
        await asyncio.sleep(0.05)
    await asyncio.sleep(args.interval)
    if args.ready:
        with open(args.ready + ".tmp", "w") as f:
            f.write(f"{stats.idle_opened} idle, {stats.slow_opened} slow\n")
        os.rename(args.ready + ".tmp", args.ready)
    print(
        f"floods: {stats.idle_opened} idle in {idle_ready:.1f}s "
        f"({stats.idle_failed} failed), {stats.slow_opened} slowloris open",
        file=sys.stderr,
    )
    if args.duration:
        try:
            await asyncio.wait_for(stop.wait(), args.duration)
        except asyncio.TimeoutError:
            stop.set()
    else:
        await stop.wait()
    idle_still_open = stats.idle_opened - stats.idle_closed_by_server
    await asyncio.wait(idle + slow, timeout=5)
    for w in held:
        w.close()
    cut = sorted(stats.slow_cut_after)
    print(
        json.dumps(
            {
                "idle_opened": stats.idle_opened,
                "idle_failed": stats.idle_failed,
                "idle_bad_status": stats.idle_bad_status,
                "idle_closed_by_server": stats.idle_closed_by_server,
                "idle_open_at_stop": idle_still_open,
                "slow_opened": stats.slow_opened,
                "slow_failed": stats.slow_failed,
                "slow_bytes_sent": stats.slow_bytes,
                "slow_cut": stats.slow_cut,
                "slow_cut_with_408": stats.slow_cut_with_408,
                "slow_cut_after_s_min": round(cut[0], 2) if cut else None,
                "slow_cut_after_s_median": round(statistics.median(cut), 2) if cut else None,
                "slow_cut_after_s_max": round(cut[-1], 2) if cut else None,
            }
        ),
        flush=True,
    )
    os._exit(0)  # skip closing thousands of transports one by one


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", default="sk-bench")
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--slow", type=int, default=2000)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between a slowloris's bytes")
    p.add_argument("--open-concurrency", type=int, default=128)
    p.add_argument("--ready", help="file written once every connection is open")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: at SIGTERM)")
    asyncio.run(main(p.parse_args()))
