"""What every target shares: the certificate, the users (htpasswd, groups) and the image."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from bench import storm as storm_module
from bench.plan import MIB, Plan, StormPlan, log
from bench.processes import tool

# Users, as the recipe has them: any valid user pulls, group "pusher" also pushes.
PULLER, PULLER_10, PUSHER = "reader", "reader10", "writer"
USER_COST = {PULLER: 5, PUSHER: 5, PULLER_10: 10}
PUSH_GROUP = "pusher"
STORM_COST = 10  # bcrypt cost of every storm user


@dataclass(frozen=True)
class Fixtures:
    """The files every target is configured with, and the users' passwords."""

    cert: Path
    key: Path
    cert_dir: Path  # holds only ca.crt, for skopeo --dest-cert-dir
    htpasswd: Path
    pushers_htpasswd: Path  # the pushers' lines only, for nginx's limit_except
    groups: Path
    passwords: dict[str, str]
    storm_users: dict[str, list[str]]  # storm case -> its users, one per client
    layout: Path  # OCI layout with one single-layer image, tag "bench"
    layer_digest: str
    layer_size: int


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    cert_dir = directory / "ca"
    cert_dir.mkdir()
    shutil.copy(cert, cert_dir / "ca.crt")
    return cert, key, cert_dir


def storm_users(storm: StormPlan) -> dict[str, list[str]]:
    """The users of each storm case: a fresh set per case, so every storm starts with cold
    credential caches (each target is a separate process with its own)."""
    cases = {f"pull-{n}": n for n in storm.pull_clients} | {f"push-{storm.push_clients}":
                                                           storm.push_clients}  # fmt: skip
    return {case: [f"{case}-{i:02d}" for i in range(n)] for case, n in cases.items()}


def make_users(
    directory: Path, storm: StormPlan
) -> tuple[Path, Path, Path, dict[str, str], dict[str, list[str]]]:
    """htpasswd -B with the recipe's split: pullers, and pushers in group "pusher"; then the
    storms' users, every one at bcrypt cost 10, the push storm's in group "pusher" too."""
    htpasswd, pushers, groups = (directory / n for n in ("htpasswd", "pushers.htpasswd", "groups"))
    passwords = {user: secrets.token_urlsafe(12) for user in USER_COST}
    for user, cost in USER_COST.items():
        create = [] if htpasswd.exists() else ["-c"]
        subprocess.run(
            [tool("htpasswd"), *create, "-i", "-B", "-C", str(cost), str(htpasswd), user],
            input=passwords[user].encode(), check=True, capture_output=True,
        )  # fmt: skip
    by_case = storm_users(storm)
    crowd = {user: secrets.token_urlsafe(12) for users in by_case.values() for user in users}
    passwords |= crowd
    with open(htpasswd, "a") as out:
        out.writelines(storm_module.htpasswd_lines(crowd, STORM_COST))
    pushing = [PUSHER] + [u for case, users in by_case.items() if case.startswith("push")
                          for u in users]  # fmt: skip
    lines = htpasswd.read_text().splitlines(keepends=True)
    pushers.write_text("".join(line for line in lines if line.split(":")[0] in pushing))
    groups.write_text(f"{PUSH_GROUP}: {' '.join(pushing)}\n")
    for path in (htpasswd, pushers, groups):
        path.chmod(0o644)  # nginx and Apache workers run as nobody/daemon when we are root
    return htpasswd, pushers, groups, passwords, by_case


def write_blob(blobs: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest


def make_image(layout: Path, size: int) -> tuple[str, int]:
    """An OCI layout with one image whose single layer is a gzip'd tar of `size` random bytes.

    gzip level 0 (stored): the layer is already compressed as far as skopeo can tell, so a push
    sends it as it is instead of spending the time in gzip.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    member = tarfile.TarInfo("random.bin")
    member.size, member.mode, member.mtime = size, 0o644, 0
    compressor = zlib.compressobj(0, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    diff_id, digest, tmp = hashlib.sha256(), hashlib.sha256(), blobs / "layer.tmp"
    with open(tmp, "wb") as out:

        def put(raw: bytes) -> None:
            diff_id.update(raw)
            packed = compressor.compress(raw)
            digest.update(packed)
            out.write(packed)

        put(member.tobuf(tarfile.USTAR_FORMAT))
        for offset in range(0, size, MIB):
            put(os.urandom(min(MIB, size - offset)))
        put(b"\0" * (-size % 512 + 1024))  # pad the member, then the two end-of-archive blocks
        tail = compressor.flush()
        digest.update(tail)
        out.write(tail)
    layer_digest = "sha256:" + digest.hexdigest()
    layer_size = tmp.stat().st_size
    tmp.rename(blobs / digest.hexdigest())
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id.hexdigest()]},
        }
    ).encode()
    config_digest = write_blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
    ).encode()
    manifest_digest = write_blob(blobs, manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return layer_digest, layer_size


def make_fixtures(directory: Path, plan: Plan) -> Fixtures:
    log(f"making the certificate, users (bcrypt cost 5 and 10; the storms' at cost 10) "
        f"and a {plan.blob_mib} MiB image")  # fmt: skip
    cert, key, cert_dir = make_certificate(directory)
    htpasswd, pushers, groups, passwords, by_case = make_users(directory, plan.storm)
    layout = directory / "image"
    layer_digest, layer_size = make_image(layout, plan.blob_mib * MIB)
    return Fixtures(
        cert, key, cert_dir, htpasswd, pushers, groups, passwords, by_case, layout, layer_digest,
        layer_size,
    )  # fmt: skip
