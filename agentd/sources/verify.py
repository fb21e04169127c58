"""Signatures on the fleet document: ssh-keygen, gpg and cosign, against the node's keys only."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from pathlib import Path
from typing import Optional

from agentd.core.paths import Paths
from agentd.core.redact import redact_text
from agentd.sources import cosign
from agentd.sources.document import MAX_DOCUMENT_BYTES, PullError, Rejected, SourceConfig
from agentd.system.commands import CommandResult, run_command
from agentd.system.files import atomic_write, remove_tree
from agentd.system.readfile import KEYRING_BYTES, SMALL_FILE_BYTES, read_bounded, read_text_bounded

# Every gpg call: never prompt, and never start a gpg-agent (verifying needs none; see GpgHome).
GPG = ("gpg", "--batch", "--no-tty", "--no-autostart")


def node_file(paths: Paths, node_path: str, what: str) -> Path:
    """A file the settings name on the node (a keyring, allowed signers); PullError if absent."""
    path = paths.under(node_path)
    if not path.is_file():
        raise PullError(f"{what} {node_path} does not exist; cannot verify the fleet document")
    return path


def output_tail(result: CommandResult) -> str:
    """The last lines a command wrote (stderr, else stdout), redacted and bounded for messages."""
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return redact_text(" / ".join(line.strip() for line in text[-3:]))[:400]


class GpgHome:
    """A private GNUPGHOME holding only the allowed keys, each trusted, rebuilt when they change.

    gpg needs a home directory of its own to verify anything; keeping one with nothing but the
    configured keyring means "a good signature" can only mean "by an allowed key".
    """

    def __init__(self, paths: Paths, keyring: str) -> None:
        self.paths = paths
        self.keyring = keyring
        self.home = paths.source_dir / "gnupg"

    def ready(self, timeout: float) -> Path:
        keyring = node_file(self.paths, self.keyring, "the gpg keyring")
        data = read_bounded(keyring, KEYRING_BYTES)
        digest = hashlib.sha256(data).hexdigest()
        stamp = self.home / "agentd-keyring.sha256"
        with contextlib.suppress(OSError):
            if read_text_bounded(stamp, SMALL_FILE_BYTES, follow=False).strip() == digest:
                return self.home
        remove_tree(self.home)
        self.home.mkdir(mode=0o700, parents=True)
        env = {"GNUPGHOME": str(self.home)}
        # The keys go into the home as a keyring file of gpg's older format, which gpg reads as
        # its public keyring, rather than through `gpg --import`: an import asks gpg-agent
        # whether each key has a secret part, which starts an agent that outlives agentd, and
        # fails outright where the home's path is too long for a socket (under a deep --root).
        # Verifying needs no agent; gpg.conf keeps git's own gpg calls from starting one.
        atomic_write(self.home / "gpg.conf", b"no-autostart\n", 0o600)
        if not data[:1] or not data[0] & 0x80:  # not binary OpenPGP (which starts with a tag)
            dearmored = run_command([*GPG, "--dearmor"], timeout, env=env, input_bytes=data)
            if not dearmored.ok:
                remove_tree(self.home)
                why = output_tail(dearmored)
                raise PullError(f"cannot use the gpg keyring {self.keyring}: {why}")
            data = dearmored.stdout_bytes
        atomic_write(self.home / "pubring.gpg", data, 0o600)
        listed = run_command([*GPG, "--with-colons", "--list-keys"], timeout, env=env)
        # The primary keys' fingerprints (an "fpr" line follows each "pub" and each "sub").
        fingerprints: list[str] = []
        previous = ""
        for line in listed.stdout.splitlines():
            fields = line.split(":")
            if fields[0] == "fpr" and previous == "pub" and len(fields) > 9:
                fingerprints.append(fields[9])
            previous = fields[0]
        if not listed.ok or not fingerprints:
            remove_tree(self.home)
            why = (output_tail(listed) if not listed.ok else "") or "no public key in it"
            raise PullError(f"cannot use the gpg keyring {self.keyring}: {why}")
        trust = "".join(f"{fpr}:6:\n" for fpr in fingerprints)  # 6: ultimate
        trusted = run_command(
            [*GPG, "--import-ownertrust"], timeout, env=env, input_bytes=trust.encode()
        )
        if not trusted.ok:
            remove_tree(self.home)
            raise PullError(f"cannot trust the keys of {self.keyring}: {output_tail(trusted)}")
        atomic_write(stamp, digest.encode() + b"\n", 0o600)
        return self.home


def gpg_signer(status: str) -> Optional[str]:
    """The fingerprint from gpg's status lines when they report exactly one valid signature."""
    lines = [line.split() for line in status.splitlines() if line.startswith("[GNUPG:] ")]
    bad = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
    if any(len(parts) > 1 and parts[1] in bad for parts in lines):
        return None
    valid = [parts[2] for parts in lines if len(parts) > 2 and parts[1] == "VALIDSIG"]
    good = [parts for parts in lines if len(parts) > 1 and parts[1] == "GOODSIG"]
    if len(valid) != 1 or len(good) != 1:
        return None
    return valid[0]


def ssh_principal(text: str) -> str:
    """The principal ssh-keygen reports a good signature for."""
    # ssh-keygen: 'Good "git" signature for alice@example.org with ED25519 key SHA256:...'
    for line in text.splitlines():
        if line.startswith("Good ") and " for " in line:
            return line.split(" for ", 1)[1].split(" with ", 1)[0].strip()
    return "unknown"


def verify_detached(config: SourceConfig, paths: Paths, data: bytes, signature: bytes) -> str:
    """Check `signature` over `data`; the signer's identity, or Rejected."""
    if config.verify == "cosign":
        return _verify_cosign(config, paths, data, signature)
    store_tmp = paths.source_dir / "tmp"
    store_tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    sig = store_tmp / f"sig-{secrets.token_hex(4)}"
    doc = store_tmp / f"doc-{secrets.token_hex(4)}"
    try:
        atomic_write(sig, signature, 0o600)
        atomic_write(doc, data, 0o600)
        if config.verify == "ssh":
            return _verify_ssh(config, paths, doc, sig)
        if config.verify == "gpg":
            return _verify_gpg_detached(config, paths, doc, sig)
        raise PullError(f"unknown verification method {config.verify!r}")
    finally:
        for path in (sig, doc):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _verify_cosign(config: SourceConfig, paths: Paths, data: bytes, signature: bytes) -> str:
    """`cosign sign-blob`'s signature (base64 ECDSA over the SHA-256), in-process."""
    named = [
        (name, read_bounded(node_file(paths, name, "the cosign public key"), SMALL_FILE_BYTES))
        for name in config.public_keys
    ]
    try:
        keys = cosign.load_keys(named)
    except cosign.SignatureError as exc:
        raise PullError(str(exc)) from None
    try:
        signer = cosign.verify_digest(hashlib.sha256(data).hexdigest(), signature, keys)
    except cosign.SignatureError as exc:
        raise Rejected(f"bad cosign signature: {exc}") from None
    return "cosign " + signer.describe()


def _verify_ssh(config: SourceConfig, paths: Paths, doc: Path, sig: Path) -> str:
    assert config.allowed_signers is not None
    signers = node_file(paths, config.allowed_signers, "the allowed-signers file")
    found = run_command(
        ["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(signers)],
        config.timeout,
    )
    principals = [p.strip() for p in found.stdout.splitlines() if p.strip()]
    if not found.ok or not principals:
        why = output_tail(found) or "no principal matched"
        raise Rejected(f"the signature is not by a key in {config.allowed_signers}: {why}")
    if config.identity is not None:
        if config.identity not in principals:
            raise Rejected(
                f"signed by {', '.join(principals)}, not by {config.identity} as the settings ask"
            )
        principals = [config.identity]
    failures: list[str] = []
    for principal in principals:
        checked = run_command(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(signers),
                "-I",
                principal,
                "-n",
                config.namespace,
                "-s",
                str(sig),
            ],
            config.timeout,
            input_bytes=read_bounded(doc, MAX_DOCUMENT_BYTES, follow=False),
        )
        if checked.ok:
            return principal
        failures.append(output_tail(checked))
    raise Rejected(f"bad signature: {'; '.join(failures)}")


def _verify_gpg_detached(config: SourceConfig, paths: Paths, doc: Path, sig: Path) -> str:
    assert config.keyring is not None
    home = GpgHome(paths, config.keyring).ready(config.timeout)
    result = run_command(
        [*GPG, "--status-fd", "1", "--verify", str(sig), str(doc)],
        config.timeout,
        env={"GNUPGHOME": str(home)},
    )
    signer = gpg_signer(result.stdout) if result.ok else None
    if signer is None:
        raise Rejected(f"bad or unknown gpg signature: {output_tail(result) or 'not signed'}")
    return signer
