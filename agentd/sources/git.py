"""The git transport: a shallow fetch of the ref into the state dir, its commit verified."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from agentd.core.paths import Paths
from agentd.sources.credentials import read_credentials
from agentd.sources.document import (
    MAX_DOCUMENT_BYTES,
    Document,
    PullError,
    Rejected,
    SourceConfig,
    Unchanged,
)
from agentd.sources.store import FleetStore
from agentd.sources.verify import GpgHome, gpg_signer, node_file, output_tail, ssh_principal
from agentd.system.commands import CommandResult, run_command
from agentd.system.files import remove_tree

GIT_TIMEOUT_FACTOR = 4  # a fetch is several round trips: each may take the source timeout


def _git_env() -> dict[str, str]:
    return {
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody will type
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",  # the node's own git settings must not change a pull
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "HOME": os.environ.get("HOME", "/root"),  # ssh finds its keys and known_hosts there
    }


def _git(
    repo: Path,
    config: SourceConfig,
    paths: Paths,
    *args: str,
    env: Optional[Mapping[str, str]] = None,
) -> CommandResult:
    tls: list[str] = []
    if config.ca_file:
        tls += ["-c", f"http.sslCAInfo={paths.under(config.ca_file)}"]
    if config.insecure_skip_verify:
        tls += ["-c", "http.sslVerify=false"]
    return run_command(
        ["git", "-C", str(repo), *tls, *args],
        config.timeout * GIT_TIMEOUT_FACTOR,
        env={**_git_env(), **(env or {})},
    )


# git asks this helper for the credentials: it hands git-credential-store the file named in the
# environment, so the secret travels through pipes only, never in an argument or environment
# value. Nothing is stored or erased: the file is the operator's.
_HELPER = (
    '!f() { if [ "$1" = get ]; then '
    'exec git credential-store --file="$AGENTD_CREDENTIALS" get; fi; }; f'
)


def _credentials(config: SourceConfig, paths: Paths) -> tuple[list[str], dict[str, str]]:
    """The git options and environment that give the fetch the credentialsFile's secret."""
    if not config.credentials_file:
        return [], {}
    path = paths.under(config.credentials_file)
    read_credentials(path, config.credentials_file, config.url)  # refused before git runs
    # The empty value first: no other helper (the node's, the system's) is asked.
    options = ["-c", "credential.helper=", "-c", f"credential.helper={_HELPER}"]
    return options, {"AGENTD_CREDENTIALS": str(path)}


def fetch(config: SourceConfig, paths: Paths, store: FleetStore) -> tuple[Document, int]:
    """The document at the ref's commit, unless that commit was judged before (Unchanged),
    the commit verified when the settings ask; with the number of requests made."""
    repo = store.dir / "git"
    if not (repo / "HEAD").is_file():
        remove_tree(repo)
        repo.mkdir(mode=0o700, parents=True)
        init = run_command(["git", "init", "--bare", "--quiet", str(repo)], config.timeout)
        if not init.ok:
            raise PullError(f"cannot create {repo}: {output_tail(init)}")
    options, env = _credentials(config, paths)
    fetched = _git(
        repo,
        config,
        paths,
        *options,
        "fetch",
        "--quiet",
        "--no-tags",
        "--depth=1",
        # FETCH_HEAD would keep the URL, credentials and all, in the state dir.
        "--no-write-fetch-head",
        "--",
        config.url,
        f"+{config.ref}:refs/agentd/fetched",
        env=env,
    )
    if not fetched.ok:
        why = output_tail(fetched)
        if config.credentials_file and "Authentication failed" in why:
            why += f" (the credentials in {config.credentials_file} were refused)"
        raise PullError(f"git fetch of {config.describe()} failed: {why}")
    rev = _git(
        repo, config, paths, "rev-parse", "--verify", "--quiet", "refs/agentd/fetched^{commit}"
    )
    commit = rev.stdout.strip()
    if not rev.ok or not commit:
        raise PullError(f"{config.describe()}: {config.ref} does not name a commit")
    if store.judged().get("origin") == commit:
        raise Unchanged()
    signer = _verify_commit(config, paths, repo, commit) if config.verify else None
    blob = _git(repo, config, paths, "cat-file", "blob", f"{commit}:{config.path}")
    if not blob.ok:
        raise Rejected(f"commit {commit[:12]} has no file {config.path}", origin=commit)
    if len(blob.stdout_bytes) > MAX_DOCUMENT_BYTES:
        raise Rejected(f"{config.path} is larger than {MAX_DOCUMENT_BYTES} bytes", origin=commit)
    # Each shallow fetch leaves the previous commit behind: let git pack and prune now and then.
    _git(repo, config, paths, "gc", "--auto", "--quiet")
    return Document(blob.stdout_bytes, commit, signed_by=signer), 1


def _verify_commit(config: SourceConfig, paths: Paths, repo: Path, commit: str) -> str:
    """The signer of `commit`, or Rejected: unsigned, unknown key, bad signature."""
    if config.verify == "ssh":
        assert config.allowed_signers is not None
        signers = node_file(paths, config.allowed_signers, "the allowed-signers file")
        result = _git(
            repo,
            config,
            paths,
            "-c",
            "gpg.format=ssh",
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            "verify-commit",
            "--raw",
            commit,
        )
        output = result.stderr + result.stdout
        signer = ssh_principal(output) if result.ok and "Good " in output else None
    else:
        assert config.keyring is not None
        home = GpgHome(paths, config.keyring).ready(config.timeout)
        result = _git(
            repo, config, paths, "verify-commit", "--raw", commit, env={"GNUPGHOME": str(home)}
        )
        signer = gpg_signer(result.stderr) if result.ok else None
    if signer is None:
        output = (result.stderr + result.stdout).strip()
        why = output_tail(result) if output else "the commit is not signed"
        raise Rejected(
            f"commit {commit[:12]} is not signed by an allowed signer: {why}", origin=commit
        )
    return signer
