"""deploy/kubernetes as data, and a pod's volumes projected the way the kubelet projects a
Secret or a ConfigMap: the files live in a timestamped directory behind a `..data` symlink,
the visible names are symlinks `name -> ..data/name`, and an update swaps `..data` with one
rename."""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"

Resource = dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    path: Path
    resource: Resource

    @property
    def kind(self) -> str:
        return str(self.resource["kind"])

    @property
    def name(self) -> str:
        return str(self.resource["metadata"]["name"])


def manifests(directory: Path = KUBERNETES) -> list[Manifest]:
    """Every resource the kustomization lists, following listed directories."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found: list[Manifest] = []
    for entry in kustomization["resources"]:
        path = directory / entry
        if path.is_dir():
            found.extend(manifests(path))
        else:
            found.extend(Manifest(path, doc) for doc in yaml.safe_load_all(path.read_text()))
    return found


def find(kind: str, name: str) -> Resource:
    (resource,) = [m.resource for m in manifests() if (m.kind, m.name) == (kind, name)]
    return resource


def payload(resource: Resource) -> dict[str, bytes]:
    """The files a ConfigMap or Secret volume shows: one per key."""
    files = {key: str(text).encode() for key, text in resource.get("stringData", {}).items()}
    decode = base64.b64decode if resource["kind"] == "Secret" else str.encode
    files.update({key: decode(value) for key, value in resource.get("data", {}).items()})
    return files


def container(deployment: Resource) -> Resource:
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def pod_volumes(deployment: Resource) -> Iterator[tuple[str, Resource, Resource]]:
    """(mount path, volume, mount) for each volume mount of the container."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for mount in container(deployment)["volumeMounts"]:
        yield mount["mountPath"], volumes[mount["name"]], mount


def local(mount_path: str, root: Path) -> Path:
    """Where a path inside the container is in a test's temp dir."""
    return root / mount_path.lstrip("/")


class ProjectedVolume:
    """A directory kept the way the kubelet's atomic writer keeps a Secret or ConfigMap volume.

    `write()` follows its steps: a new `..YYYY_MM_DD_HH_MM_SS.<random>` directory with every
    file, visible symlinks `name -> ..data/name` for new names, a `..data_tmp` symlink to the
    new directory renamed over `..data` (the one atomic step), then the names no longer in
    the payload and the previous directory removed.
    """

    DATA = "..data"

    def __init__(self, directory: Path, mode: int = 0o644) -> None:
        self.directory = directory
        self.mode = mode
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, files: Mapping[str, bytes]) -> None:
        data = self.directory / self.DATA
        old = os.readlink(data) if data.is_symlink() else None
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        new = Path(tempfile.mkdtemp(prefix=stamp, dir=self.directory))
        new.chmod(0o755)
        for name, content in files.items():
            (new / name).write_bytes(content)
            (new / name).chmod(self.mode)
        for name in files:
            visible = self.directory / name
            if not visible.is_symlink():
                visible.symlink_to(Path(self.DATA) / name)
        swap = self.directory / "..data_tmp"
        swap.symlink_to(new.name)
        swap.replace(data)  # rename(2) over the old symlink: readers see old or new, whole
        if old is not None:
            for gone in {p.name for p in (self.directory / old).iterdir()} - set(files):
                (self.directory / gone).unlink()
            shutil.rmtree(self.directory / old)

    def generation(self) -> str:
        """The directory `..data` points to now."""
        return os.readlink(self.directory / self.DATA)


@dataclass
class Pod:
    """The Deployment's volumes under a test's temp dir: each Secret and ConfigMap volume
    with its manifest's files (container paths in ConfigMap files rewritten to `root`), not
    written until `write()`; emptyDir volumes as empty directories."""

    deployment: Resource
    root: Path
    volumes: dict[str, ProjectedVolume] = field(default_factory=dict)  # by volume name
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # what each holds

    def __post_init__(self) -> None:
        for mount_path, volume, _ in pod_volumes(self.deployment):
            directory = local(mount_path, self.root)
            if "secret" in volume:
                source = volume["secret"]
                files = payload(find("Secret", source["secretName"]))
            elif "configMap" in volume:
                source = volume["configMap"]
                files = payload(find("ConfigMap", source["name"]))
                files = {key: self.localise(text.decode()).encode() for key, text in files.items()}
            else:
                directory.mkdir(parents=True)
                continue
            self.volumes[volume["name"]] = ProjectedVolume(directory, source["defaultMode"])
            self.files[volume["name"]] = files

    def localise(self, text: str) -> str:
        """Container paths under the mounts -> the same paths under `root`, in one pass (a
        mount like /tmp must not rewrite what another substitution produced)."""
        mount_paths = sorted((m for m, _, _ in pod_volumes(self.deployment)), key=len)[::-1]
        pattern = r"(?<![\w./-])(" + "|".join(re.escape(m) for m in mount_paths) + ")/"
        return re.sub(pattern, lambda match: f"{local(match.group(1), self.root)}/", text)

    def write(self) -> None:
        for name, volume in self.volumes.items():
            volume.write(self.files[name])

    def update(self, volume: str, **changed: bytes) -> None:
        """`kubectl apply` of a changed Secret or ConfigMap, as the kubelet then writes it."""
        self.files[volume] = {**self.files[volume], **changed}
        self.volumes[volume].write(self.files[volume])

    def args(self) -> list[str]:
        """The container's arguments, with paths under the mounts rewritten."""
        return [self.localise(arg) for arg in container(self.deployment)["args"]]

    def config_path(self) -> Path:
        args = self.args()
        return Path(args[args.index("-c") + 1])
