"""A real OpenLDAP `slapd` for the tests and the bench: private temp dir, free 127.0.0.1 ports,
stopped by PID.

Nothing outside the work directory is touched: the configuration is a generated slapd.conf
(`slapd -f`, no cn=config, no debconf, no system service), the database is an mdb directory
beside it, and the client tools run with LDAPNOINIT so /etc/ldap/ldap.conf is not read. The
system schema files are only read.

The directory (suffix dc=example,dc=org), loaded with ldapadd after the first start so the
memberof overlay fills in memberOf:

    ou=people     alice, bob, carol (inetOrgPerson, {SSHA} passwords), twin
      ou=admins   root (a decoy for DN-template injection), twin (same uid: ambiguous)
    ou=groups     groupOfNames: pusher {alice}, developers {alice, bob}, release team {bob}
    ou=otherapp   groupOfNames: pusher {carol} (same CN outside ou=groups)
    ou=posixgroups  posixGroup: staff {alice, carol}, ops {bob} (memberUid)
    ou=services   regproxy: the service account that may search people

Anonymous clients may bind (authenticate) and read the root DSE, nothing else; the service
account and bound users may read entries. A DN with an empty password binds as anonymous
(`allow bind_anon_dn`, as Active Directory does): the classic bypass the backend must refuse.
slapd runs in the foreground with `-d stats`, so its log records every BIND (see `binds()`).
TLS: ldaps:// on `tls_port` and StartTLS on `port`, with a certificate for `localhost` only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import trustme

from devtools.net import free_port
from devtools.processes import start, stop

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
POSIX_GROUPS = f"ou=posixgroups,{SUFFIX}"
SERVICE_DN = f"cn=regproxy,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"
PASSWORDS = {
    "alice": "alice-pw",
    "bob": "b0b:with colon",
    "carol": "carol-pw",
    "root": "root-pw",  # uid=root,ou=admins,ou=people: reachable only by an injected DN
    "twin": "twin-pw",  # two entries with uid=twin: a search finds both
}
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")


def ssha(password: str) -> str:
    """An RFC 2307 {SSHA} userPassword value, as `slappasswd -h {SSHA}` makes."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def tool(name: str) -> str:
    """An OpenLDAP program: on PATH, or in /usr/sbin (not on every user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} not found: run scripts/install-deps.sh slapd ldap-utils")
    return found


def _person(uid: str, base: str, password: str) -> str:
    return (
        f"dn: uid={uid},{base}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
        f"cn: {uid.title()}\nsn: {uid.title()}\nuserPassword: {ssha(password)}\n"
    )


def _group(cn: str, base: str, members: list[str]) -> str:
    lines = "".join(f"member: uid={m},{PEOPLE}\n" for m in members)
    return f"dn: cn={cn},{base}\nobjectClass: groupOfNames\ncn: {cn}\n{lines}"


def _posix_group(cn: str, gid: int, members: list[str]) -> str:
    lines = "".join(f"memberUid: {m}\n" for m in members)
    return (
        f"dn: cn={cn},{POSIX_GROUPS}\nobjectClass: posixGroup\ncn: {cn}\ngidNumber: {gid}\n{lines}"
    )


def directory_ldif() -> str:
    """The test directory: people first, then groups (so memberof sees the members exist)."""
    ous = ["people", "groups", "otherapp", "posixgroups", "services"]
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
        "o: Example\n",
        *(f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n" for ou in ous),
        f"dn: ou=admins,{PEOPLE}\nobjectClass: organizationalUnit\nou: admins\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: regproxy\nuserPassword: {ssha(SERVICE_PASSWORD)}\n",
        *(_person(uid, PEOPLE, PASSWORDS[uid]) for uid in ("alice", "bob", "carol", "twin")),
        _person("root", f"ou=admins,{PEOPLE}", PASSWORDS["root"]),
        _person("twin", f"ou=admins,{PEOPLE}", PASSWORDS["twin"]),
        _group("pusher", GROUPS, ["alice"]),
        _group("developers", GROUPS, ["alice", "bob"]),
        _group("release team", GROUPS, ["bob"]),
        _group("pusher", f"ou=otherapp,{SUFFIX}", ["carol"]),
        _posix_group("staff", 1000, ["alice", "carol"]),
        _posix_group("ops", 1001, ["bob"]),
    ]
    return "\n".join(entries)


class Slapd:
    """`slapd -d stats -f DIR/slapd.conf` on ldap://127.0.0.1:port (StartTLS offered) and
    ldaps://127.0.0.1:tls_port, certificates from a trustme CA (`ca_file`).

    Use as a context manager. `stop()`/`start()` keep the ports and the data; `pause()` and
    `resume()` SIGSTOP/SIGCONT it (a server that accepts connections but never answers).
    """

    def __init__(self, workdir: Path, *, start_timeout: float = 20.0) -> None:
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.root_password = secrets.token_urlsafe(12)
        self.data = workdir / "data"
        self.log = workdir / "slapd.log"
        self.config = workdir / "slapd.conf"
        self.port = 0
        self.tls_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(exist_ok=True)
        self.ca_file, self.server_cert, self.server_key = _make_tls(workdir / "tls")
        self._write_config()
        try:
            self._start_on_free_ports()
            self._load(directory_ldif())
        except BaseException:
            self.stop()
            raise

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Plain LDAP (StartTLS available) on the loopback address."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """LDAPS by name: the certificate is for localhost only (not 127.0.0.1)."""
        return f"ldaps://localhost:{self.tls_port}"

    @property
    def start_tls_url(self) -> str:
        """The plain port by the name the certificate has, for StartTLS."""
        return f"ldap://localhost:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def _write_config(self) -> None:
        includes = "".join(f"include {SCHEMA_DIR / s}.schema\n" for s in SCHEMAS)
        self.config.write_text(
            f"{includes}"
            f"modulepath {MODULE_DIR}\nmoduleload back_mdb\nmoduleload memberof\n"
            f"pidfile {self.workdir / 'slapd.pid'}\nargsfile {self.workdir / 'slapd.args'}\n"
            f"TLSCACertificateFile {self.ca_file}\n"
            f"TLSCertificateFile {self.server_cert}\n"
            f"TLSCertificateKeyFile {self.server_key}\n"
            "TLSVerifyClient never\n"
            # Accept a DN with an empty password as an anonymous bind, the way Active Directory
            # and many others do: the bypass the backend must refuse on its own.
            "allow bind_anon_dn\n"
            "\ndatabase mdb\n"
            f'suffix "{SUFFIX}"\nrootdn "{ROOT_DN}"\nrootpw {ssha(self.root_password)}\n'
            f"directory {self.data}\nmaxsize 16777216\n"
            "index objectClass eq\nindex uid,memberUid,member eq\n"
            "overlay memberof\n"
            # Root DSE for everyone; passwords only to authenticate; entries to bound users.
            'access to dn.base="" by * read\n'
            "access to attrs=userPassword by self write by anonymous auth by * none\n"
            "access to * by users read by * none\n"
        )
        self._test_config()

    def _test_config(self) -> None:
        result = subprocess.run(
            [tool("slaptest"), "-u", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"slaptest rejected {self.config}:\n{result.stderr}")

    def _start_on_free_ports(self) -> None:
        for attempt in range(3):  # a free port may be taken before slapd binds it
            self.port, self.tls_port = free_port(), free_port()
            try:
                self.start()
                return
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.log_text():
                    raise

    def start(self) -> None:
        """Start slapd (again) on its ports; wait until it answers, or raise with its log."""
        if self.running:
            return
        listen = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tls_port}/"
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        argv = [tool("slapd"), "-d", "stats", "-f", str(self.config), "-h", listen]
        self._proc = start(argv, self.log, env=_ldap_env(), append=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if (rc := self._proc.poll()) is not None:
                raise RuntimeError(f"slapd exited {rc}:\n{self.log_text()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                probe = subprocess.run(
                    [tool("ldapwhoami"), "-x", "-H", self.url, "-o", "nettimeout=1"],
                    capture_output=True,
                    timeout=5,
                    env=_ldap_env(),
                )
                if probe.returncode == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"slapd not ready in {self.start_timeout}s:\n{self.log_text()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM slapd by PID (SIGKILL after timeout); its ports close, its data stays."""
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGCONT)  # a paused slapd cannot handle SIGTERM
        stop(self._proc, timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing answers.

        Returns once every thread is stopped (the signal itself is asynchronous)."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        tasks = Path(f"/proc/{self._proc.pid}/task")
        while not all(_stopped(task) for task in tasks.iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not stop on SIGSTOP")
            time.sleep(0.01)

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    def __enter__(self) -> Slapd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- data and log ------------------------------------------------------------------------

    def _load(self, ldif: str) -> None:
        result = subprocess.run(
            [tool("ldapadd"), "-x", "-H", self.url, "-D", ROOT_DN, "-w", self.root_password],
            input=ldif,
            capture_output=True,
            text=True,
            timeout=30,
            env=_ldap_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"ldapadd failed:\n{result.stderr}\n{self.log_text()}")

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change record as the root DN (`changetype:` lines included)."""
        self._load(ldif)

    def log_text(self, since_start: bool = False) -> str:
        """slapd's log: everything, or what its current run wrote."""
        if not self.log.exists():
            return ""
        data = self.log.read_bytes()
        return data[self._log_offset if since_start else 0 :].decode(errors="replace")

    def binds(self, dn: str | None = None) -> int:
        """BIND requests slapd logged since its last start (for `dn` only, if given)."""
        found = re.findall(r' BIND dn="([^"]*)" method=', self.log_text(since_start=True))
        return sum(1 for d in found if dn is None or d.lower() == dn.lower())

    def bind_lines(self, dn: str) -> list[str]:
        """The log lines of the binds as `dn` that slapd accepted (with their ssf=)."""
        pattern = rf' BIND dn="{re.escape(dn)}" mech=SIMPLE .*'
        return re.findall(pattern, self.log_text(since_start=True), flags=re.I)

    def whoami(self, dn: str, password: str) -> subprocess.CompletedProcess[str]:
        """ldapwhoami -x -D dn -w password: what slapd itself answers to that bind."""
        return subprocess.run(
            [tool("ldapwhoami"), "-x", "-H", self.url, "-D", dn, "-w", password],
            capture_output=True,
            text=True,
            timeout=30,
            env=_ldap_env(),
        )

    def search(self, base: str, filter: str, *attributes: str) -> str:
        """ldapsearch as the root DN (a check independent of the code under test)."""
        result = subprocess.run(
            [tool("ldapsearch"), "-LLL", "-x", "-H", self.url, "-D", ROOT_DN,
             "-w", self.root_password, "-b", base, filter, *attributes],
            capture_output=True,
            text=True,
            timeout=30,
            env=_ldap_env(),
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"ldapsearch failed:\n{result.stderr}")
        return result.stdout


def _stopped(task: Path) -> bool:
    """Whether a /proc/PID/task/TID is in state T (stopped); a thread gone counts as stopped."""
    try:
        stat = (task / "stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def _make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A trustme CA, and a server certificate for `localhost` only: 127.0.0.1 is NOT in it,
    so `ldaps://127.0.0.1` tests host name verification."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    paths[1].write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(paths[2]))
    return paths


def other_ca(directory: Path) -> Path:
    """The certificate of a CA that did not sign slapd's certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "other-ca.crt"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def _ldap_env() -> dict[str, str]:
    """The environment minus LDAP* settings, with LDAPNOINIT: no ldap.conf, no ~/.ldaprc."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDAP")}
    return env | {"LDAPNOINIT": "1"}


@contextlib.contextmanager
def running_slapd(workdir: Path) -> Iterator[Slapd]:
    """A started slapd with the test directory loaded, stopped on exit."""
    server = Slapd(workdir)
    try:
        yield server
    finally:
        server.stop()
