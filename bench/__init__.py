"""`make bench`: regproxy against the registry, nginx and Apache (`python -m bench.run`), then
the scale curves (`python -m bench.scale`); bench/README.md says how to run and read them."""
