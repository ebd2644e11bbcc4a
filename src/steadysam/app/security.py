"""Who may talk to the annotation server, and how much.

* **Loopback by default.** Bound to 127.0.0.1 / localhost / ::1 the server only answers requests
  whose ``Host`` header names a loopback address with the server's port: a web page on another
  site that points its own domain at 127.0.0.1 (DNS rebinding) sends its own name as Host and
  is refused.
* **Elsewhere, a token.** Bound to any other address, every request must carry the access token
  printed in the URL (``?token=``; the page then keeps it in a same-site cookie; scripts may send
  ``X-Steadysam-Token``). The Host check is then left to the token.
* **Same origin for changes.** A request that changes something (POST, PUT, PATCH, DELETE) from a
  browser must come from the app's own page: an ``Origin`` header, when present, must match
  ``Host``, and ``Sec-Fetch-Site`` must not be ``cross-site``.
* **Bounded bodies.** A request body longer than the limit (``Content-Length`` or counted while
  it streams) is refused with 413 before the app reads it.

Refusals are JSON ``{"error": ...}`` with a 4xx status, like every other error of the API.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

TOKEN_COOKIE = "steadysam_token"
TOKEN_HEADER = "x-steadysam-token"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
MiB = 1 << 20

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]  # fmt: skip


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(port: int) -> set[str]:
    """The Host header values a browser sends for this machine's loopback addresses."""
    return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}


class Guard:
    """ASGI middleware enforcing the rules above.

    Arguments:
        app: the application.
        allowed_hosts: Host header values accepted (None: any, e.g. behind a token).
        token: the access token (None: no token needed).
        max_body: body size limit in bytes for most requests.
        large_body_paths: path prefixes with their own, larger limit (e.g. COCO import).
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Iterable[str] | None,
        token: str | None = None,
        max_body: int = 2 * MiB,
        large_body_paths: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.token = token
        self.max_body = max_body
        self.large_body_paths = large_body_paths or {}

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _refuse(send, 421, f"Host {host!r} is not this server (allowed: "
                                     f"{', '.join(sorted(self.allowed_hosts))})")  # fmt: skip
            return
        set_cookie = False
        if self.token is not None:
            given, set_cookie = self._token_of(scope, headers)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                await _refuse(send, 401, "missing or wrong access token: open the URL the "
                                         "server printed (it ends in ?token=...)")  # fmt: skip
                return
        if scope["method"] in UNSAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and (urlsplit(origin).netloc.lower() != host or origin == "null"):
                await _refuse(send, 403, f"cross-origin request from {origin!r} refused")
                return
            if headers.get("sec-fetch-site") == "cross-site":
                await _refuse(send, 403, "cross-site request refused")
                return
        limit = self.max_body
        for prefix, size in self.large_body_paths.items():
            if scope["path"].startswith(prefix):
                limit = size
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _refuse(send, 400, f"bad Content-Length {length!r}")
                return
            if int(length) > limit:
                await _refuse(send, 413, f"request body of {int(length)} bytes is over the "
                                         f"limit of {limit} bytes")  # fmt: skip
                return
        receive = _counting(receive, limit)
        if set_cookie:
            send = _with_cookie(send, self.token)
        await self.app(scope, receive, send)

    def _token_of(self, scope: dict, headers: dict[str, str]) -> tuple[str | None, bool]:
        """(token given, whether it came in the URL and should become a cookie)."""
        if TOKEN_HEADER in headers:
            return headers[TOKEN_HEADER], False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "token" in query:
            return query["token"][0], True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:
            return None, False
        morsel = cookie.get(TOKEN_COOKIE)
        return (morsel.value if morsel is not None else None), False


class BodyTooLarge(Exception):
    """Raised while reading a streamed body that passes the limit (the app turns it into 413)."""


def _counting(receive, limit: int):
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
        return message

    return wrapped


def _with_cookie(send, token: str):
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            message = {**message, "headers": [*message["headers"],
                                              (b"set-cookie", cookie.encode())]}  # fmt: skip
        await send(message)

    return wrapped


async def _refuse(send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
