"""Tools that use the product from outside, and are not part of it: the load tester and the
original app's flow for side-by-side benchmarks. Nothing in proto/, gateway/ or services/ imports them."""
