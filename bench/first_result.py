"""A user's script in miniature: ``python first_result.py PEER WORKERS`` prints ``FIRST``
when its pool's first result is in. bench/fresh.py times it from process start, against
a bare ``python -c "print('FIRST')"``. Kept tiny: clones and spawned workers re-run it."""

import sys

if __name__ == "__main__":
    import peers

    pool = peers.pool_factory(sys.argv[1])(int(sys.argv[2]))
    pool.submit(abs, -1).result()
    print("FIRST", flush=True)
    pool.shutdown()
