"""agentd.yaml's `registries:`, in the layout of k3s's /etc/rancher/k3s/registries.yaml."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Optional

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator

from agentd.schema.types import StrictModel

# HOST[:PORT] as an image reference names a registry; "*" is k3s's wildcard mirror.
_HOST_RE = re.compile(r"^(\*|[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)\Z")
_ENDPOINT_RE = re.compile(r"^https?://[^/\s@?#]+(/v2)?/?\Z")


def _check_hosts(hosts: list[str]) -> None:
    for host in hosts:
        if not _HOST_RE.match(host):
            raise ValueError(f"not a registry host[:port]: {host!r}")


class Mirror(StrictModel):
    # Tried in order before the registry itself (k3s's default endpoint, always last); an
    # http:// endpoint is how a plain-HTTP registry is allowed.
    endpoint: list[str] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            if not _ENDPOINT_RE.match(url):
                raise ValueError(
                    f"an endpoint is http(s)://HOST[:PORT] without credentials: {url!r}"
                )
        return endpoints


class RegistryAuth(StrictModel):
    username: Optional[str] = None
    password: Optional[SecretStr] = None
    auth: Optional[SecretStr] = None  # base64 of USER:PASSWORD, as in a docker config.json
    # containerd's OAuth2 refresh token (k3s: identity_token, its docs: token): refused below.
    identity_token: Optional[SecretStr] = None
    token: Optional[SecretStr] = None

    @field_validator("auth")
    @classmethod
    def _pair(cls, auth: Optional[SecretStr]) -> Optional[SecretStr]:
        if auth is not None:
            try:
                decoded = base64.b64decode(auth.get_secret_value(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError("auth is base64 of USER:PASSWORD") from None
            if ":" not in decoded:
                raise ValueError("auth is base64 of USER:PASSWORD")
        return auth

    @model_validator(mode="after")
    def _one_kind(self) -> RegistryAuth:
        if self.identity_token is not None or self.token is not None:
            raise ValueError(
                "not supported yet: identity tokens (OAuth2 refresh tokens); give username and "
                "password, which agentd sends to the registry's token endpoint"
            )
        if self.auth is not None and (self.username is not None or self.password is not None):
            raise ValueError("give either auth or username and password, not both")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs its username")
        return self

    # The daemon's worker gets the settings as JSON: the secrets go with them (0600 snapshot,
    # the environment of a root process), never to a log; `agentd settings` masks them.
    @field_serializer("password", "auth", "identity_token", "token")
    def _reveal(self, value: Optional[SecretStr]) -> Optional[str]:
        return value.get_secret_value() if value is not None else None


class RegistryTls(StrictModel):
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _files(self) -> RegistryTls:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{name} must be an absolute path")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


class RegistryConfig(StrictModel):
    auth: Optional[RegistryAuth] = None
    tls: Optional[RegistryTls] = None


class RegistrySettings(StrictModel):
    """Where oci:// artifacts come from: `mirrors` keyed by the registry a reference names,
    `configs` keyed by the host an endpoint connects to."""

    mirrors: dict[str, Mirror] = Field(default_factory=dict)
    configs: dict[str, RegistryConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _hosts(self) -> RegistrySettings:
        _check_hosts(list(self.mirrors))
        if "*" in self.configs:
            raise ValueError("configs are per endpoint host; the '*' wildcard is for mirrors")
        _check_hosts(list(self.configs))
        return self
