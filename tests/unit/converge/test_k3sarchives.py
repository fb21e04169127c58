"""Image and chart archives checked as k3s reads them, against the real zstd, gzip, bzip2, lz4."""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from agentd.converge.k3sarchives import (
    K3S_ZSTD_MAX_WINDOW,
    check_chart_archive,
    check_image_archive,
    zstd_window,
)
from agentd.core.errors import ConvergeError
from tests.support.k3sarchives import chart_archive, image_archive

needs = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("zstd", "gzip", "bzip2", "lz4")),
    reason="zstd, gzip, bzip2 and lz4 (Debian's packages) are needed",
)


def _zstd(data: bytes, *flags: str, from_file: Path | None = None) -> bytes:
    """The real zstd's output: from stdin (size unknown) or from a file (size in the header)."""
    if from_file is not None:
        from_file.write_bytes(data)
        return subprocess.run(
            ["zstd", "-q", "-c", *flags, str(from_file)], capture_output=True, check=True
        ).stdout
    return subprocess.run(
        ["zstd", "-q", "-c", *flags], input=data, capture_output=True, check=True
    ).stdout


def _zstd_says(frame: bytes, tmp_path: Path) -> int:
    """The window size `zstd -lv` reads from the same frame header."""
    path = tmp_path / "frame.zst"
    path.write_bytes(frame)
    out = subprocess.run(["zstd", "-lv", str(path)], capture_output=True, text=True, check=True)
    found = re.search(r"Window Size: .*\((\d+) B\)", out.stdout + out.stderr)
    assert found, out.stdout + out.stderr
    return int(found.group(1))


@needs
@pytest.mark.parametrize(
    ("size", "flags", "from_file"),
    [
        (100_000, ("--long=27",), False),  # a stream: the window descriptor says 128 MiB
        (100_000, ("--long=25",), False),
        (100_000, ("-19",), False),
        (100_000, (), False),
        (5_000, (), True),  # a file: single segment, the window is the content size
        (300, (), True),  # content size in two bytes (+256)
        (100, (), True),
        (3_000_000, ("-3",), True),
    ],
)
def test_the_window_is_what_zstd_itself_reads(
    size: int, flags: tuple[str, ...], from_file: bool, tmp_path: Path
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    frame = _zstd(data, *flags, from_file=tmp_path / "in" if from_file else None)
    assert zstd_window(frame) == _zstd_says(frame, tmp_path)


@needs
def test_a_skippable_frame_first_is_skipped(tmp_path: Path) -> None:
    frame = _zstd(b"x" * 4096, "--long=27")
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    assert zstd_window(skippable + frame) == 1 << 27


def _image_tar(tmp_path: Path) -> bytes:
    return image_archive(tmp_path / "src.tar", ["docker.io/library/busybox:1.36"])


@needs
def test_a_long_window_zstd_archive_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "gk.tar.zst"
    path.write_bytes(_zstd(_image_tar(tmp_path), "--long=27"))
    with pytest.raises(ConvergeError, match=r"128 MiB .* at most 32 MiB .*zstd --long=25"):
        check_image_archive(path, "/var/lib/rancher/k3s/agent/images/gk.tar.zst")
    path.write_bytes(_zstd(_image_tar(tmp_path), "--long=25"))
    assert zstd_window(path.read_bytes()) == K3S_ZSTD_MAX_WINDOW
    check_image_archive(path, "/var/lib/rancher/k3s/agent/images/gk.tar.zst")


@needs
@pytest.mark.parametrize(
    ("suffix", "command"),
    [
        (".tar.gz", "gzip"),
        (".tgz", "gzip"),
        (".tar.bz2", "bzip2"),
        (".tbz", "bzip2"),
        (".tar.lz4", "lz4"),
        (".TAR.ZST", "zstd"),
    ],
)
def test_each_compression_k3s_reads_is_accepted_and_a_mismatch_refused(
    suffix: str, command: str, tmp_path: Path
) -> None:
    tar = _image_tar(tmp_path)
    packed = subprocess.run([command, "-c"], input=tar, capture_output=True, check=True).stdout
    path = tmp_path / f"image{suffix}"
    path.write_bytes(packed)
    check_image_archive(path, f"/images/gk{suffix}")
    path.write_bytes(tar)  # a plain tar behind a compressed suffix
    with pytest.raises(ConvergeError, match="would fail to import it"):
        check_image_archive(path, f"/images/gk{suffix}")


def test_a_plain_tar_must_be_a_docker_save_or_oci_layout(tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    good.write_bytes(_image_tar(tmp_path))
    check_image_archive(good, "/images/good.tar")
    oci = tmp_path / "oci.tar"
    with tarfile.open(oci, "w") as tar:
        for name in ("oci-layout", "index.json"):
            (tmp_path / name).write_text("{}")
            tar.add(tmp_path / name, arcname=name)
    check_image_archive(oci, "/images/oci.tar")
    bare = tmp_path / "bare.tar"
    with tarfile.open(bare, "w") as tar:
        tar.add(good, arcname="payload")
    with pytest.raises(ConvergeError, match=r"neither manifest\.json"):
        check_image_archive(bare, "/images/bare.tar")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 64)
    with pytest.raises(ConvergeError, match="not a tar archive"):
        check_image_archive(junk, "/images/junk.tar")


def test_the_chart_must_be_the_desired_chart_and_version(tmp_path: Path) -> None:
    chart = tmp_path / "gatekeeper.tgz"
    chart_archive(chart, "gatekeeper", "3.15.1")
    check_chart_archive(chart, "/charts/gatekeeper.tgz", "gatekeeper", "3.15.1")
    chart_archive(chart, "gatekeeper", "3.15.0")
    wanted = "chart gatekeeper 3.15.0, and the desired state says gatekeeper 3.15.1"
    with pytest.raises(ConvergeError, match=re.escape(wanted)):
        check_chart_archive(chart, "/charts/gatekeeper.tgz", "gatekeeper", "3.15.1")
    chart_archive(chart, "nginx", "3.15.1")
    with pytest.raises(ConvergeError, match="chart nginx"):
        check_chart_archive(chart, "/charts/gatekeeper.tgz", "gatekeeper", "3.15.1")
    chart.write_bytes(_image_tar(tmp_path))
    with pytest.raises(ConvergeError, match="not a gzip'd tar"):
        check_chart_archive(chart, "/charts/gatekeeper.tgz", "gatekeeper", "3.15.1")
