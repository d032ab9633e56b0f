"""regproxy's tests, in three layers, each in its own folder:

- `tests/unit/`: pure code (parsers, classification, policy, throttle, catalog paging,
  events, caches with an injected clock): tables and properties, no sockets, no subprocesses,
  no servers, files only under `tmp_path`. `tests/unit/conftest.py` refuses network and
  subprocesses so this stays true. `make check` runs them, with lint and the type check, in
  under a minute: the inner loop while editing.
- `tests/`: in-process integration: regproxy (or one of its I/O parts) runs in the test's event
  loop on loopback, against the recording fake upstream (`conftest.FakeUpstream`) for faults
  and features Debian's registry lacks; and the CLI as a subprocess (`conftest.serving`).
- `tests/e2e/`: end to end with real programs: docker-registry, podman, skopeo, buildah,
  docker, slapd; every test there is marked `e2e` (`pytest -m "not e2e"` skips them).

Where a test goes: in the lowest tier that can show the behaviour, in the file named after the
module it exercises (`proxy/core/limits.py`: `tests/unit/test_limits.py`, and a
`tests/test_<module>.py` for what needs sockets or processes); a test of a feature that spans
modules (a client against the whole stack, the README's examples) in a file named after the
feature.

One set of helpers: `devtools/` (free ports, processes stopped by PID, the real registry, test
TLS files, skopeo; shared with the bench and the scripts), `tests/conftest.py` (fake upstream,
TLS pair, in-process and subprocess proxies), `tests/e2e/harness.py` (the other real clients).
Tests wait for a positive signal, never for a fixed time before asserting that something did
not happen.

`make test` runs the test files side by side, one process per CPU (pytest-xdist, whole files
per process): a server gets a port from `devtools/net.py` and a directory under `tmp_path`,
never a fixed one; tests that share a server share a module (a module-scoped fixture), and may
rely on running in order only within it.
"""
