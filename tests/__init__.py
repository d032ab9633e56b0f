"""regproxy's tests, in three layers, each in its own folder:

- `tests/unit/`: pure code (parsers, classification, policy, throttle, catalog paging,
  events, caches with an injected clock): tables and properties, no sockets, no subprocesses,
  no servers, files only under `tmp_path`. `tests/unit/conftest.py` refuses network and
  subprocesses so this stays true. Fast: run them while editing.
- `tests/`: in-process integration: regproxy (or one of its I/O parts) runs in the test's event
  loop on loopback, against the recording fake upstream (`conftest.FakeUpstream`) for faults
  and features Debian's registry lacks; and the CLI as a subprocess (`conftest.serving`).
- `tests/e2e/`: end to end with real programs: docker-registry, podman, skopeo, buildah,
  docker, slapd; every test there is marked `e2e` (`pytest -m "not e2e"` skips them).

One set of helpers: `devtools/` (free ports, processes stopped by PID, the real registry, test
TLS files, skopeo; shared with the bench and the scripts), `tests/conftest.py` (fake upstream,
TLS pair, in-process and subprocess proxies), `tests/e2e/harness.py` (the other real clients).
Tests wait for a positive signal, never for a fixed time before asserting that something did
not happen.
"""
