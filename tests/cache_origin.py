"""Origin handlers that speak HTTP caching: ETag, Cache-Control and 304 on If-None-Match."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.origin import Origin


@dataclass
class Resource:
    """A body the test can change; its ETag follows the version."""

    body: bytes
    cache_control: str = "max-age=0"
    version: int = 1
    extra: dict[str, str] = field(default_factory=dict)
    not_modified: int = 0  # how many 304s were sent

    @property
    def etag(self) -> str:
        return f'"v{self.version}"'

    def change(self, body: bytes) -> None:
        self.body = body
        self.version += 1


def serve_resource(origin: Origin, path: str, resource: Resource) -> str:
    """Serve ``resource`` at ``path``: 304 when If-None-Match names the current ETag."""

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": resource.etag, "Cache-Control": resource.cache_control,
                   **resource.extra}
        if request.headers.get("If-None-Match") == resource.etag:
            resource.not_modified += 1
            return web.Response(status=304, headers=headers)
        origin.count_sent(len(resource.body))
        return web.Response(body=resource.body, headers=headers)

    return origin.route(path, handler)
