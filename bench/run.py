"""Benchmark ClonePool against its peers: ``python bench/run.py [--quick] [--workers N] [--only ...]``.

The benchmark starts in ``harness.py``. This file stays tiny because pool workers
re-run the main script as ``__mp_main__`` (ClonePool clones and the spawn and
forkserver start methods alike); the guard below keeps them from starting a
benchmark of their own, and the absence of imports keeps that re-run cheap.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    import harness

    code = harness.main(sys.argv[1:])
    if not sys.argv[1:] and not code:  # the full run also measures Dask and joblib on clones
        import scale_out

        missing = scale_out.missing_packages()
        if missing:
            print(f"Dask/joblib rows: n/a ({', '.join(missing)} not installed; `make bench` "
                  "installs the dask and joblib extras)")
        else:
            code = scale_out.main([])
    sys.exit(code)
