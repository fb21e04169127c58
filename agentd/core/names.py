"""Kubernetes' name and label syntax, and agentd's own alphabet for names that become file names."""

from __future__ import annotations

import re
from typing import Optional

# Kubernetes' rules, as k8s.io/apimachinery/pkg/util/validation/validation.go states them
# (IsDNS1123Label, IsDNS1123Subdomain, IsQualifiedName, IsValidLabelValue). Go's `$` is the end
# of the text; Python's `$` also matches before a final newline, so every check is a fullmatch.
DNS1123_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_FMT = rf"{DNS1123_LABEL_FMT}(\.{DNS1123_LABEL_FMT})*"
DNS1123_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_FMT = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_FMT = rf"({QUALIFIED_NAME_FMT})?"
LABEL_VALUE_MAX = 63
# k8s.io/kubernetes/pkg/apis/core/validation: validateTaintEffect.
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# agentd's own: a plugin or override name becomes part of file names, state keys and messages,
# so it is printable ASCII with no path separator, no leading dot or dash, and bounded.
SAFE_NAME_FMT = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"

_LABEL = re.compile(DNS1123_LABEL_FMT)
_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_FMT)
_QUALIFIED = re.compile(QUALIFIED_NAME_FMT)
_SAFE_NAME = re.compile(SAFE_NAME_FMT)


def dns1123_label_error(value: str) -> Optional[str]:
    """Why `value` is not a DNS-1123 label (RuntimeClass handlers, k3s node names), or None."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be no more than {DNS1123_LABEL_MAX} characters"
    if not _LABEL.fullmatch(value):
        return (
            "a DNS-1123 label must consist of lower case alphanumeric characters or '-', and "
            "must start and end with an alphanumeric character (e.g. 'crun-wasm')"
        )
    return None


def dns1123_subdomain_error(value: str) -> Optional[str]:
    """Why `value` is not a DNS-1123 subdomain (object names, label prefixes), or None."""
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
    if not _SUBDOMAIN.fullmatch(value):
        return (
            "a DNS-1123 subdomain must consist of lower case alphanumeric characters, '-' or "
            "'.', and must start and end with an alphanumeric character (e.g. 'example.com')"
        )
    return None


def label_key_error(key: str) -> Optional[str]:
    """Why `key` is not a label key (an optional DNS subdomain prefix and '/', then a name of
    at most 63 characters), or None; taint keys follow the same rule."""
    parts = key.split("/")
    if len(parts) > 2:
        return "a label key is a name with an optional DNS subdomain prefix and '/'"
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            return "the prefix before '/' must be non-empty"
        why = dns1123_subdomain_error(parts[0])
        if why:
            return f"the prefix {why}"
    if not name:
        return "the name must be non-empty"
    if len(name) > QUALIFIED_NAME_MAX:
        return f"the name must be no more than {QUALIFIED_NAME_MAX} characters"
    if not _QUALIFIED.fullmatch(name):
        return (
            "the name must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character (e.g. 'MyName', 'my.name', '123-abc')"
        )
    return None


def label_value_error(value: str) -> Optional[str]:
    """Why `value` is not a label value (empty, or like a label name), or None."""
    if len(value) > LABEL_VALUE_MAX:
        return f"must be no more than {LABEL_VALUE_MAX} characters"
    if value and not _QUALIFIED.fullmatch(value):
        return (
            "a label value must be empty or consist of alphanumeric characters, '-', '_' or "
            "'.', and must start and end with an alphanumeric character"
        )
    return None


def label_error(text: str) -> Optional[str]:
    """Why `text` is not a `key=value` label (k3s's node-label), or None."""
    key, eq, value = text.partition("=")
    if not eq:
        return "a node label is written key=value"
    why = label_key_error(key)
    if why:
        return f"label key {key!r}: {why}"
    why = label_value_error(value)
    return f"label value {value!r}: {why}" if why else None


def taint_error(text: str) -> Optional[str]:
    """Why `text` is not a `key[=value]:Effect` taint (k3s's node-taint), or None."""
    spec, colon, effect = text.rpartition(":")
    if not colon:
        return "a taint is written key=value:Effect or key:Effect"
    if effect not in TAINT_EFFECTS:
        return f"the taint effect must be one of {', '.join(TAINT_EFFECTS)}, not {effect!r}"
    key, _, value = spec.partition("=")
    why = label_key_error(key)
    if why:
        return f"taint key {key!r}: {why}"
    why = label_value_error(value)
    return f"taint value {value!r}: {why}" if why else None


def safe_name_error(name: str) -> Optional[str]:
    """Why `name` is not in agentd's alphabet for names that become file names, or None."""
    if not _SAFE_NAME.fullmatch(name):
        return (
            "a name is 1-128 of A-Z a-z 0-9 . _ + - and starts with a letter or digit "
            "(no spaces, slashes or control characters)"
        )
    return None
