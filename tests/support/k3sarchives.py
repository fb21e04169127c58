"""Archives as k3s reads them: a Helm chart (`helm package` layout) and `docker save` images."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def chart_archive(path: Path, name: str, version: str, app_version: str = "") -> bytes:
    """A chart as `helm package` writes it: NAME/Chart.yaml (apiVersion v2) and values.yaml,
    gzip'd; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chart = f"apiVersion: v2\nname: {name}\nversion: {version}\n"
    if app_version:
        chart += f"appVersion: {app_version}\n"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, f"{name}/Chart.yaml", chart.encode())
        _add(tar, f"{name}/values.yaml", b"replicas: 3\n")
    return path.read_bytes()


def image_archive(path: Path, tags: list[str], layer: bytes = b"layer") -> bytes:
    """A `docker save` archive (manifest.json naming RepoTags, a config and one layer), plain
    tar; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as inner:
        _add(inner, "payload", layer)
    layer_bytes = layer_tar.getvalue()
    layer_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": [f"{layer_id}/layer.tar"]}]
    with tarfile.open(path, "w") as tar:
        _add(tar, f"{layer_id}/layer.tar", layer_bytes)
        _add(tar, config_name, config)
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return path.read_bytes()
