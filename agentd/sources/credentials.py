"""The source's credentialsFile: git-credential store lines, from a file no one else reads."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agentd.sources.document import PullError

# A credentials file is a few lines; anything near this is not one.
MAX_CREDENTIALS_BYTES = 64 << 10
URL_CREDENTIALS_REFUSED = (
    "credentials in a source URL are refused (they would be on git's command line and in "
    "messages): put https://USER:TOKEN@HOST in a 0600 credentialsFile"
)


def has_credentials(url: str) -> bool:
    """Whether `url` holds a secret before its host: ssh://git@host names a user and no
    secret; anything else before an @ is a credential."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0] if sep else ""
    return "@" in authority and (scheme.lower() != "ssh" or ":" in authority.rpartition("@")[0])


@dataclass(frozen=True)
class Credentials:
    """One user and secret for the source's origin; the secret is never shown."""

    username: str
    secret: str
    file: str  # the file as the settings name it, for messages

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, ***, {self.file!r})"


def _origin(url: str) -> tuple[str, str]:
    """The scheme and host[:port] as written: git-credential-store compares them so, and a line
    git would not use must not pass this check either."""
    split = urlsplit(url)
    return split.scheme.lower(), split.netloc.rpartition("@")[2].lower()


def check_owner(path: Path, display: str) -> os.stat_result:
    """The file's stat when it is a regular file, not a link, owned by root or this user and
    readable by no one else; PullError (with the fix) otherwise."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise PullError(f"credentialsFile {display}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PullError(f"credentialsFile {display} is not a regular file (a link or other)")
    if st.st_uid not in (0, os.getuid()):
        raise PullError(
            f"credentialsFile {display} is owned by uid {st.st_uid}: it must be owned by root "
            "or the user agentd runs as"
        )
    if st.st_mode & 0o077:
        raise PullError(
            f"credentialsFile {display} is mode {stat.S_IMODE(st.st_mode):04o}, readable by "
            f"others: refused (chmod 600 {display})"
        )
    return st


def read_credentials(path: Path, display: str, url: str) -> Credentials:
    """The first line of the git-credential store file `path` (`https://user:token@host`)
    whose scheme and host[:port] are the URL's, as written; PullError when there is none."""
    st = check_owner(path, display)
    if st.st_size > MAX_CREDENTIALS_BYTES:
        raise PullError(f"credentialsFile {display} is larger than {MAX_CREDENTIALS_BYTES} bytes")
    try:
        # Not blocking, not following a link swapped in since the check, and bounded.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PullError(f"credentialsFile {display} is not a regular file")
            data = f.read(MAX_CREDENTIALS_BYTES + 1)
    except OSError as exc:
        raise PullError(f"credentialsFile {display}: {exc.strerror or exc}") from None
    want = _origin(url)
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        split = urlsplit(line)
        if "@" not in split.netloc or split.password is None:
            # The line is not echoed: it is most likely a secret written the wrong way.
            raise PullError(
                f"credentialsFile {display}:{number}: not a git-credential line "
                "(https://USER:TOKEN@HOST)"
            )
        # A line with a path is for that path only, which git does not ask about by default.
        if _origin(line) == want and split.path in ("", "/"):
            return Credentials(unquote(split.username or ""), unquote(split.password), display)
    scheme, host = want
    raise PullError(f"credentialsFile {display} has no line for {scheme}://{host}")
