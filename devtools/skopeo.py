"""skopeo with a private HOME, and that private HOME for the other containers tools."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from devtools.processes import DEFAULT_TIMEOUT, Children, CommandError, Proc, clean_env, run


def flags(opts: Mapping[str, object]) -> list[str]:
    """["--flag", "value", ...] for the options whose value is set."""
    return [arg for flag, value in opts.items() if value for arg in (flag, str(value))]


def private_home(home: Path, **extra: str) -> dict[str, str]:
    """Env giving containers/image tools a private HOME (config, policy, auth, blob-info cache).

    ~/.config/containers/registries.conf (unlike CONTAINERS_REGISTRIES_CONF) also hides the
    system registries.conf.d; a fake non-zero _CONTAINERS_ROOTLESS_UID moves root's blob-info
    cache from the shared /var/lib/containers/cache to ~/.local/share/containers/cache.
    """
    conf = home / ".config/containers"
    conf.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    (conf / "registries.conf").write_text(
        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
    )
    (conf / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (home / "auth.json").write_text('{"auths": {}}')  # podman --authfile fails if it is missing
    return clean_env(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home / "run"),
        TMPDIR=str(home / "tmp"),
        REGISTRY_AUTH_FILE=str(home / "auth.json"),
        _CONTAINERS_ROOTLESS_UID="4242",
        **extra,
    )


class Skopeo:
    """skopeo with a private HOME: blob-info cache, auth file, registries.conf and policy.

    The cache lives as long as the instance: copying a blob again to another repo of the same
    registry becomes a cross-repo mount (HEAD in the old repo, POST ?mount=&from=). Use a fresh
    instance to force real uploads.
    """

    def __init__(
        self, workdir: Path, *, timeout: float = DEFAULT_TIMEOUT, children: Children | None = None
    ) -> None:
        self.workdir, self.timeout, self.children = workdir, timeout, children
        self.env = private_home(workdir)
        self.base = ["skopeo", "--tmpdir", str(workdir / "tmp")]

    def run(self, *args: str) -> Proc:
        """`skopeo <private global flags> args...`; raises only when out of time."""
        argv = [*self.base, *args]
        return run(argv, env=self.env, timeout=self.timeout, children=self.children)

    def copy(
        self,
        src: str,
        dest: str,
        *,
        creds: str | None = None,
        src_creds: str | None = None,
        dest_cert_dir: Path | None = None,
        src_cert_dir: Path | None = None,
        extra: Sequence[str] = (),
    ) -> Proc:
        """`skopeo copy [extra] src dest` (transport-prefixed refs); creds (USER:PASS) for dest."""
        opts = {
            "--dest-creds": creds,
            "--src-creds": src_creds,
            "--dest-cert-dir": dest_cert_dir,
            "--src-cert-dir": src_cert_dir,
        }
        return self.run("copy", *flags(opts), *extra, src, dest)

    def inspect_raw(self, ref: str, creds: str | None = None, cert_dir: Path | None = None) -> Proc:
        """`skopeo inspect --raw ref`: the raw top-level manifest on stdout."""
        remote = flags({"--creds": creds, "--cert-dir": cert_dir})
        return self.run("inspect", "--raw", *remote, ref)

    def manifest_digest(
        self, ref: str, creds: str | None = None, cert_dir: Path | None = None
    ) -> str:
        """sha256 of the raw top-level manifest at ref; raises CommandError on failure."""
        proc = self.inspect_raw(ref, creds, cert_dir)
        if proc.returncode != 0:
            raise CommandError(f"skopeo inspect {ref}: exit {proc.returncode}\n{proc.stderr}")
        raw = proc.stdout.encode("utf-8", "surrogateescape")
        return f"sha256:{hashlib.sha256(raw).hexdigest()}"
