"""Verified archives that k3s reads as they are: checked for what k3s can read before placing."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import IO, Optional

import yaml

from agentd.core.errors import ConvergeError

# k3s's decoder of .tar.zst image archives refuses a window above this (rancher/wharfie
# pkg/tarfile/tarfile.go MaxDecoderMemory = 1 << 25, passed to klauspost zstd's
# WithDecoderMaxMemory, which bounds the window of a streamed frame: "window size exceeded").
K3S_ZSTD_MAX_WINDOW = 1 << 25
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# The archive formats k3s imports, by the suffix it matches case-insensitively (wharfie's
# SupportedExtensions), and the magic bytes each of its decompressors needs.
_MAGIC = {
    ".tar.gz": b"\x1f\x8b",
    ".tgz": b"\x1f\x8b",
    ".tar.bz2": b"BZh",
    ".tbz": b"BZh",
    ".tar.lz4": b"\x04\x22\x4d\x18",
    ".tar.zst": ZSTD_MAGIC,
    ".tzst": ZSTD_MAGIC,
}
_CHART_YAML_MAX = 1 << 20
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)  # zstd skippable frame magics (RFC 8878 3.1.2)


def _suffix(target: str) -> str:
    lower = target.lower()
    found = [s for s in (*_MAGIC, ".tar") if lower.endswith(s)]
    return max(found, key=len) if found else ""


def zstd_window(head: bytes) -> Optional[int]:
    """The window the first zstd frame in `head` needs to be decoded (RFC 8878 3.1.1.1.2),
    skipping skippable frames; None if `head` holds no whole frame header."""
    pos = 0
    while len(head) >= pos + 8 and int.from_bytes(head[pos : pos + 4], "little") in _SKIPPABLE:
        pos += 8 + int.from_bytes(head[pos + 4 : pos + 8], "little")
    if head[pos : pos + 4] != ZSTD_MAGIC or len(head) < pos + 6:
        return None
    descriptor = head[pos + 4]
    single_segment = bool(descriptor & 0x20)
    if not single_segment:
        window = head[pos + 5]
        base = 1 << (10 + (window >> 3))
        return base + (base >> 3) * (window & 0x07)
    # A single-segment frame has no window descriptor: it is the content size.
    did_size = (0, 1, 2, 4)[descriptor & 0x03]
    fcs_size = (1, 2, 4, 8)[descriptor >> 6]
    start = pos + 5 + did_size
    if len(head) < start + fcs_size:
        return None
    size = int.from_bytes(head[start : start + fcs_size], "little")
    return size + 256 if fcs_size == 2 else size


def check_image_archive(path: Path, target: str) -> None:
    """Refuse an image archive that k3s would fail to import, naming why: what its suffix
    promises is not what it holds, its zstd window is above k3s's decoder limit, or a plain tar
    is neither a `docker save` nor an OCI layout archive."""
    suffix = _suffix(target)
    with path.open("rb") as f:
        head = f.read(1 << 16)
    magic = _MAGIC.get(suffix)
    if magic is not None and not head.startswith(magic) and suffix not in (".tar.zst", ".tzst"):
        raise ConvergeError(
            f"{target}: the file is not {suffix} (its first bytes are {head[:4].hex() or 'none'}): "
            "k3s picks the decompressor by the suffix and would fail to import it"
        )
    if suffix in (".tar.zst", ".tzst"):
        window = zstd_window(head)
        if window is None:
            raise ConvergeError(
                f"{target}: the file is not zstd-compressed: k3s would fail to import it"
            )
        if window > K3S_ZSTD_MAX_WINDOW:
            raise ConvergeError(
                f"{target}: its zstd window is {window >> 20} MiB and k3s decodes image "
                f'archives with at most {K3S_ZSTD_MAX_WINDOW >> 20} MiB ("window size '
                'exceeded"): compress it with `zstd --long=25` or less'
            )
    if suffix == ".tar":
        _check_image_tar(path, target)


def _check_image_tar(path: Path, target: str) -> None:
    try:
        with tarfile.open(path, "r:") as tar:
            names = {m.name.lstrip("./") for m in tar}
    except (tarfile.TarError, OSError) as e:
        raise ConvergeError(f"{target}: not a tar archive ({e})") from None
    if not names & {"manifest.json", "index.json"}:
        raise ConvergeError(
            f"{target}: the tar holds neither manifest.json (`docker save`) nor index.json (an "
            "OCI layout): containerd would import no image from it"
        )


def _is_chart_yaml(name: str) -> bool:
    top, _, rest = name.partition("/")
    return bool(top) and rest == "Chart.yaml"


def check_chart_archive(path: Path, target: str, name: str, version: str) -> None:
    """Refuse a chart archive that is not chart `name` at `version`: helm-controller's install
    job would fail on it, or install another version than the desired state says."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = next((m for m in tar if _is_chart_yaml(m.name)), None)
            if member is None or not member.isfile() or member.size > _CHART_YAML_MAX:
                raise ConvergeError(f"{target}: not a Helm chart archive (no CHART/Chart.yaml)")
            stream: Optional[IO[bytes]] = tar.extractfile(member)
            text = stream.read(_CHART_YAML_MAX) if stream is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConvergeError(f"{target}: not a gzip'd tar, as a Helm chart is ({e})") from None
    try:
        chart = yaml.safe_load(text)
    except yaml.YAMLError:
        chart = None
    if not isinstance(chart, dict):
        raise ConvergeError(f"{target}: its Chart.yaml is not a mapping")
    found = (str(chart.get("name")), str(chart.get("version")))
    if found != (name, version):
        raise ConvergeError(
            f"{target}: the archive is chart {found[0]} {found[1]}, and the desired state says "
            f"{name} {version}"
        )
