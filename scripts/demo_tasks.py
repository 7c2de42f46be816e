"""The demo's workload: pure-Python CPU work, importable by the clones."""


def count_primes(start: int, stop: int) -> int:
    count = 0
    for n in range(max(start, 2), stop):
        for d in range(2, int(n**0.5) + 1):
            if n % d == 0:
                break
        else:
            count += 1
    return count
