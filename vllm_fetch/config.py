"""Environment variables, read in one place. Every one is optional and documented in README."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def env_str(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A variable's value, stripped; None when it is unset or blank."""
    value = (environ if environ is not None else os.environ).get(name)
    return value.strip() or None if value is not None else None


#: Variables naming a CA bundle (a file or a directory), the first one set wins: ours, then
#: requests' own two, then OpenSSL's. Both drivers verify with the same one.
CA_BUNDLE_VARIABLES = ("VLLM_FETCH_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                       "SSL_CERT_FILE")


def ca_bundle(environ: Mapping[str, str] | None = None) -> str | None:
    """The CA bundle to verify TLS with (:data:`CA_BUNDLE_VARIABLES`), or None: the default."""
    env = environ if environ is not None else os.environ
    return next((env[name] for name in CA_BUNDLE_VARIABLES if env.get(name)), None)


def env_flag(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """A boolean variable: 1/true/yes/on or 0/false/no/off; anything else is an error."""
    value = (environ if environ is not None else os.environ).get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A positive number of seconds."""
    value = (environ if environ is not None else os.environ).get(name)
    if value is None or not value.strip():
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if not number > 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return number


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """A byte count such as ``"10GB"`` (10**9 each), ``"512MiB"`` (2**20 each) or ``"1000"``."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (use e.g. 10GB, 512MiB, 1000000)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def env_size(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """A byte count from the environment, e.g. ``VLLM_FETCH_CACHE_SIZE=20GB``."""
    value = (environ if environ is not None else os.environ).get(name)
    if value is None or not value.strip():
        return default
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
