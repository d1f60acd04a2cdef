"""A local stand-in for API Gateway HTTP APIs: real HTTP in, payload v2 events to a handler.

Each request is matched against the function's `HttpApi` routes from
template.yaml and turned into the event Lambda would receive (payload format
2.0: `routeKey`, `rawPath`, `rawQueryString`, lower-cased headers with repeats
joined by commas, `cookies`, decoded `queryStringParameters` and
`pathParameters`, `requestContext.http`, base64 bodies for binary content).
The handler's response dict is turned back into HTTP the way API Gateway does.

Differences from API Gateway, on purpose: paths listed in `local_routes`
(Swagger UI) and CORS preflights (`OPTIONS`, which the deployed API answers
from its CorsConfiguration) are passed to the handler with the `$default`
route key instead of being refused.

Invocations run one at a time, as on one Lambda instance: the handler's
module-level state (the resolver's current event) is not shared between
concurrent requests in real Lambda either.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devkit.sam import TEMPLATE, Handler, local_stacks

ACCOUNT_ID = "123456789012"
API_ID = "local"
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-www-form-urlencoded", "+json", "+xml")


@dataclass(frozen=True)
class Route:
    method: str  # GET, ..., or ANY
    path: str  # as in the template: /orders/{orderId}, /files/{proxy+}
    pattern: re.Pattern[str]
    static: int  # literal characters: more specific routes win, as in API Gateway

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @classmethod
    def parse(cls, method: str, path: str) -> Route:
        regex, static = "", 0
        for part in re.split(r"(\{[^}]+\})", path):
            if part.startswith("{") and part.endswith("+}"):
                regex += f"(?P<{part[1:-2]}>.+)"
            elif part.startswith("{"):
                regex += f"(?P<{part[1:-1]}>[^/]+)"
            else:
                regex += re.escape(part)
                static += len(part)
        return cls(method.upper(), path, re.compile(f"^{regex}$"), static)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in (method, "ANY"):
            return None
        found = self.pattern.match(path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items()}


def http_routes(logical_id: str, template: Path = TEMPLATE) -> list[Route]:
    """The function's HttpApi routes, read with the SAM CLI's own template provider."""
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider

    stacks = local_stacks(template)
    function = SamFunctionProvider(stacks).get(logical_id)
    events: Mapping[str, Any] = (function.events if function else None) or {}
    routes = [
        Route.parse(str(e["Properties"].get("Method", "ANY")), str(e["Properties"]["Path"]))
        for e in events.values()
        if e.get("Type") == "HttpApi" and "Path" in e.get("Properties", {})
    ]
    return sorted(routes, key=lambda r: (-r.static, r.method == "ANY"))


def build_event(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    route_key: str,
    path_parameters: Mapping[str, str] | None = None,
    source_ip: str = "127.0.0.1",
    protocol: str = "HTTP/1.1",
) -> dict[str, Any]:
    """The payload format 2.0 event API Gateway sends for this request."""
    url = urlsplit(target)
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        name = name.lower()
        if name == "cookie":  # payload v2 moves cookies out of the headers
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    host = joined.get("host", "127.0.0.1")
    joined.setdefault("x-forwarded-for", source_ip)
    joined.setdefault("x-forwarded-proto", "http")
    joined.setdefault("x-forwarded-port", host.rpartition(":")[2] if ":" in host else "80")
    joined.setdefault("x-amzn-trace-id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}")

    query: dict[str, str] = {}
    for name, value in parse_qsl(url.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value

    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": url.path,
        "rawQueryString": url.query,
        "headers": joined,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": host.partition(":")[0],
            "domainPrefix": host.partition(":")[0].split(".")[0],
            "http": {
                "method": method,
                "path": url.path,
                "protocol": protocol,
                "sourceIp": source_ip,
                "userAgent": joined.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16] + "=",
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body:
        content_type = joined.get("content-type", "")
        if any(t in content_type for t in TEXT_TYPES):
            with contextlib.suppress(UnicodeDecodeError):
                event["body"] = body.decode()
        if "body" not in event:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


@dataclass
class HttpReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def reply_from(result: Any) -> HttpReply:
    """API Gateway's reading of a payload v2 Lambda response."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # a bare value: API Gateway infers 200 with the value as JSON
        return HttpReply(200, [("content-type", "application/json")], json.dumps(result).encode())
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    headers = [(k, str(v)) for k, v in (result.get("headers") or {}).items()]
    headers += [(k, str(v)) for k, values in (result.get("multiValueHeaders") or {}).items() for v in values]
    headers += [("set-cookie", c) for c in result.get("cookies") or []]
    return HttpReply(int(result["statusCode"]), headers, raw)


def _message(status: HTTPStatus) -> HttpReply:
    body = json.dumps({"message": status.phrase}).encode()  # API Gateway's own error shape
    return HttpReply(status.value, [("content-type", "application/json")], body)


class LocalGateway:
    """Routes a request like API Gateway and invokes the handler with the v2 event."""

    def __init__(
        self,
        handler: Handler,
        routes: list[Route],
        context_factory: Callable[[], Any],
        local_routes: Iterable[str] = ("GET /swagger",),
    ):
        self.handler, self.routes, self.context_factory = handler, routes, context_factory
        self.local_routes = [Route.parse(*r.split(" ", 1)) for r in local_routes]
        self._invoke_lock = threading.Lock()
        self.last_event: dict[str, Any] | None = None

    def event(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        ip: str = "127.0.0.1",
    ) -> dict[str, Any] | None:
        """The event for this request, or None when API Gateway would answer 404 itself."""
        path = urlsplit(target).path
        for route in self.routes:
            parameters = route.match(method, path)
            if parameters is not None:
                return build_event(method, target, headers, body, route.key, parameters, ip)
        if method == "OPTIONS" or any(r.match(method, path) is not None for r in self.local_routes):
            return build_event(method, target, headers, body, "$default", None, ip)
        return None

    def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        ip: str = "127.0.0.1",
    ) -> HttpReply:
        event = self.event(method, target, headers, body, ip)
        if event is None:
            return _message(HTTPStatus.NOT_FOUND)
        try:
            with self._invoke_lock:
                self.last_event = event
                result = self.handler(event, self.context_factory())
            return reply_from(result)
        except Exception as error:  # what API Gateway answers when the function fails
            print(f"handler failed: {error!r}", file=sys.stderr)
            return _message(HTTPStatus.INTERNAL_SERVER_ERROR)


class HttpApiServer:
    """Serves the gateway at http://host:port over real HTTP; `port=0` picks a free port."""

    def __init__(
        self,
        gateway: LocalGateway,
        host: str = "127.0.0.1",
        port: int = 0,
        log: Callable[[str], None] | None = None,
    ):
        self.gateway = gateway
        self.log = log
        self._thread: threading.Thread | None = None
        self.httpd = ThreadingHTTPServer((host, port), self._request_class())
        self.httpd.daemon_threads = True
        report = self.httpd.handle_error

        def handle_error(request: Any, address: Any) -> None:
            # a client that hangs up mid-answer (a load generator stopping) is not an error
            if not isinstance(sys.exc_info()[1], ConnectionError):
                report(request, address)

        self.httpd.handle_error = handle_error  # type: ignore[method-assign,assignment]

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def _request_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two sends: with Nagle's algorithm a
            # keep-alive client's delayed ACK held each body back ~40 ms
            disable_nagle_algorithm = True
            server_version = "cachesync-local"

            def _serve(self) -> None:
                started = time.perf_counter()
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = list(self.headers.items())
                reply = server.gateway.request(self.command, self.path, headers, body, self.client_address[0])
                self.send_response(reply.status)
                for name, value in reply.headers:
                    if name.lower() not in ("content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)
                if server.log:
                    elapsed = (time.perf_counter() - started) * 1000
                    server.log(f"{self.command} {self.path} -> {reply.status} ({elapsed:.1f} ms)")

            def __getattr__(self, name: str) -> Any:
                # every method reaches the gateway (TRACE, PROPFIND...): unrouted ones get its 404
                if name.startswith("do_"):
                    return self._serve
                raise AttributeError(name)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per request comes from _serve instead

        return Request

    def start(self) -> HttpApiServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
