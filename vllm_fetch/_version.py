"""Version of vllm_fetch and the User-Agent it sends."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("vllm-fetch")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"


def _vllm_version() -> str:
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return "unknown"


VLLM_VERSION = _vllm_version()
DEFAULT_USER_AGENT = f"vLLM/{VLLM_VERSION} vllm_fetch/{__version__}"
