"""The app's static frontend with SPA fallback.

A file that exists is served with its content type (hashed assets cached for a year);
any other GET returns index.html so client-side routing works. A path never leaves the
folder: `..` segments, NUL bytes and symlinks that point outside all answer 404.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
from pathlib import Path
from typing import BinaryIO

import falcon

from ..errors import METHOD_NOT_ALLOWED, NOT_FOUND, ApiError

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# a hash segment as bundlers write it: index-D8fK3x9a.js, main.3f2a9c1b.css
_HASHED = re.compile(r"[.-](?=[A-Za-z0-9_]*\d)(?=[A-Za-z0-9_]*[A-Za-z])[A-Za-z0-9_]{8,}\.\w+$")


class FrontendSink:
    def __init__(self, root: Path | None, frame_ancestors: str = "'none'",
                 referrer_policy: str = "no-referrer") -> None:
        self.root = root.resolve() if root else None
        self.policy = page_policy(frame_ancestors, referrer_policy)

    async def __call__(self, req: falcon.Request, resp: falcon.Response, **kwargs: str) -> None:
        if self.root is None:
            raise ApiError(404, NOT_FOUND, f"nothing is served at {req.path}")
        if req.method not in ("GET", "HEAD"):
            resp.set_header("allow", "GET, HEAD")
            raise ApiError(405, METHOD_NOT_ALLOWED, f"{req.method} is not allowed here")
        target = self.resolve(req.path)
        if target is None:
            raise ApiError(404, NOT_FOUND, f"nothing is served at {req.path}")
        if not target.is_file():
            target = self.root / "index.html"
            if not target.is_file():
                raise ApiError(404, NOT_FOUND, f"nothing is served at {req.path}")
        self.send(req, resp, target)

    def resolve(self, path: str) -> Path | None:
        """The file `path` names inside the folder, or None when it would leave it."""
        relative = path.lstrip("/")
        if "\x00" in relative or "\\" in relative:
            return None
        if any(part == ".." for part in relative.split("/")):
            return None
        candidate = Path(os.path.realpath(self.root / relative))
        if not candidate.is_relative_to(self.root):  # (the root itself is relative to it)
            return None
        return candidate

    def send(self, req: falcon.Request, resp: falcon.Response, target: Path) -> None:
        resp.set_headers(self.policy)
        content_type, _ = mimetypes.guess_type(target.name)
        resp.content_type = content_type or "application/octet-stream"
        hashed = target.name != "index.html" and _HASHED.search(target.name)
        resp.cache_control = [IMMUTABLE if hashed else REVALIDATE]
        size = target.stat().st_size
        resp.content_length = size
        if req.method == "GET":
            resp.stream = FileStream(target.open("rb"))


def page_policy(frame_ancestors: str, referrer_policy: str) -> dict[str, str]:
    """Headers that keep the app's pages from being framed by other sites (clickjacking) and
    its URLs from leaking in Referer headers. X-Frame-Options says the same as the CSP for
    browsers that read only it, where it can ('none' and 'self')."""
    headers = {"content-security-policy": f"frame-ancestors {frame_ancestors}",
               "referrer-policy": referrer_policy}
    legacy = {"'none'": "DENY", "'self'": "SAMEORIGIN"}.get(frame_ancestors.strip())
    if legacy:
        headers["x-frame-options"] = legacy
    return headers


class FileStream:
    """A file for falcon.asgi's `resp.stream`, read on a thread so a slow disk never stalls
    the event loop."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    async def read(self, size: int = -1) -> bytes:
        return await asyncio.to_thread(self.file.read, size)

    async def close(self) -> None:
        self.file.close()
