"""A small ORAS command line on oras-py (the ORAS Python SDK), run by harness.Oras in a
subprocess with a private HOME: `login` (what oras-py's login writes to ~/.docker/config.json),
`push` of one file as an artifact with an OCI 1.1 `artifactType`, and `pull`.

oras-py's push builds the manifest itself and has no parameter for `artifactType`: the
registry subclass below adds the field to the manifest push() uploads, nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import oras.provider


class ArtifactRegistry(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's registry client, uploading manifests with an `artifactType`."""

    artifact_type: str | None = None

    def upload_manifest(self, manifest: dict[str, Any], container: Any) -> Any:
        if self.artifact_type:
            manifest = {**manifest, "artifactType": self.artifact_type}
        return super().upload_manifest(manifest, container)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oras_client")
    parser.add_argument("--ca", required=True, help="the only CA to trust (PEM)")
    commands = parser.add_subparsers(dest="command", required=True)
    login = commands.add_parser("login")
    login.add_argument("hostport")
    login.add_argument("user")  # the password comes on stdin
    push = commands.add_parser("push")
    push.add_argument("ref")
    push.add_argument("file", help="PATH:MEDIA_TYPE")
    push.add_argument("--artifact-type", required=True)
    pull = commands.add_parser("pull")
    pull.add_argument("ref")
    pull.add_argument("outdir")
    args = parser.parse_args(argv)

    registry = ArtifactRegistry(tls_verify=args.ca, auth_backend="basic")
    try:
        if args.command == "login":
            registry.login(args.user, sys.stdin.readline().rstrip("\n"), hostname=args.hostport)
        elif args.command == "push":
            registry.artifact_type = args.artifact_type
            response = registry.push(
                target=args.ref, files=[args.file], disable_path_validation=True, quiet=True
            )
            print(response.headers["Docker-Content-Digest"])
        else:
            registry.pull(target=args.ref, outdir=args.outdir)
            print(json.dumps(registry.get_manifest(args.ref)))
    except Exception as exc:  # oras-py raises bare ValueError for HTTP errors: say it, exit 1
        print(f"oras_client {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
