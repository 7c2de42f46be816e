"""An asyncio TCP service whose CPU-bound handlers run on clones.

    python examples/asyncio_service.py [--port 8765] [--workers N]

Protocol: one request per line, ``primes N`` (how many primes are <= N) or ``collatz N``
(the start below N with the longest Collatz chain), or ``stats`` (the pool's workers); one
answer line each. Try it with ``printf 'primes 1000000\\ncollatz 100000\\n' | nc 127.0.0.1 8765``.
Ctrl-C stops it: leaving the pool's ``with`` block by KeyboardInterrupt interrupts running
tasks. It listens on the loopback interface only.
"""

import argparse
import asyncio

from gilclone.pool import ClonePool


def prime_count(limit):
    sieve = bytearray([1]) * (limit + 1)
    sieve[:2] = b"\0\0"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return sum(sieve)


def longest_collatz(limit):
    best, best_start = 0, 1
    for start in range(1, limit):
        n, steps = start, 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        if steps > best:
            best, best_start = steps, start
    return best_start


HANDLERS = {"primes": prime_count, "collatz": longest_collatz}
MAX_ARGUMENT = 10**8  # a request may not ask for unbounded work


def answer(pool, line):
    """The clone task for a request line, or an error text (checked in the host)."""
    words = line.split()
    if words == ["stats"]:
        return None, " ".join(f"clone{s.clone}:{s.tasks}" for s in pool.stats()) or "idle"
    if len(words) != 2 or words[0] not in HANDLERS or not words[1].isdigit():
        return None, "error: expected 'primes N', 'collatz N' or 'stats'"
    if int(words[1]) > MAX_ARGUMENT:
        return None, f"error: N must be at most {MAX_ARGUMENT}"
    return (HANDLERS[words[0]], int(words[1])), None


def make_handler(pool):
    async def handle(reader, writer):
        loop = asyncio.get_running_loop()
        try:
            while line := await reader.readline():
                task, text = answer(pool, line.decode("ascii", "replace"))
                if task is not None:
                    # The event loop serves other connections while a clone computes.
                    text = str(await loop.run_in_executor(pool, *task))
                writer.write(text.encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    return handle


async def serve(pool, port):
    server = await asyncio.start_server(make_handler(pool), "127.0.0.1", port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"serving on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="0: any free port (printed)")
    parser.add_argument("--workers", type=int, default=None, help="clones (default: CPUs)")
    args = parser.parse_args(argv)
    with ClonePool(args.workers) as pool:
        try:
            asyncio.run(serve(pool, args.port))
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
