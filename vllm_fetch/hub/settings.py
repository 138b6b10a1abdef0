"""The huggingface_hub environment, read as huggingface_hub reads it: HF_ENDPOINT, HF_TOKEN
(then the token file under HF_HOME or HF_TOKEN_PATH), HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def hf_home() -> Path:
    home = _env("HF_HOME") or os.path.join(
        _env("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home)))


def hub_cache(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else ``$HF_HOME/hub``."""
    if cache_dir is not None:
        return Path(cache_dir)
    value = _env("HF_HUB_CACHE") or _env("HUGGINGFACE_HUB_CACHE")
    if value:
        return Path(os.path.expandvars(os.path.expanduser(value)))
    return hf_home() / "hub"


def endpoint(explicit: str | None = None) -> str:
    return (explicit or _env("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token(explicit: str | bool | None = None) -> str | None:
    """``token`` (False: none), else HF_TOKEN / HUGGING_FACE_HUB_TOKEN, else the token file."""
    if explicit is False:
        return None
    if isinstance(explicit, str):
        return explicit
    value = _env("HF_TOKEN") or _env("HUGGING_FACE_HUB_TOKEN")
    if value:
        return value.strip()
    path = Path(_env("HF_TOKEN_PATH") or hf_home() / "token")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def offline() -> bool:
    value = _env("HF_HUB_OFFLINE") or _env("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE
