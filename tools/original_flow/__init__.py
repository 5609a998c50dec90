"""The original app's flow, for side-by-side benchmarks: one process, one global lock, one turn at a time."""
