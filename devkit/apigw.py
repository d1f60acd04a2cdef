"""A local stand-in for API Gateway HTTP APIs: real HTTP in, payload v2 events to a handler.

Each request is matched against the function's `HttpApi` routes from
template.yaml and turned into the event Lambda would receive (payload format
2.0: `routeKey`, `rawPath`, `rawQueryString`, lower-cased headers with repeats
joined by commas, `cookies`, decoded `queryStringParameters` and
`pathParameters`, `requestContext.http`, base64 bodies for binary content).
The handler's response dict is turned back into HTTP the way API Gateway does.

The HTTP API's own settings apply as deployed (`HttpApiSettings`, read from
the template's HttpApi): its CorsConfiguration (preflights answered by the
gateway, the CORS headers set on every answer and any the function sends
dropped) and its JWT authorizer on the routes that name it (devkit.localjwt;
401 or 403 before the function runs). Without settings, neither applies.

Local additions, on purpose: paths listed in `local_routes` (Swagger UI) go to
the handler with the `$default` route key; a GET no route takes is served from
`static_dir` (the pages in web/, which S3 and CloudFront serve when deployed);
`extras` are JSON answers of the local stack itself (Kafka's end offsets).

Invocations run one at a time, as on one Lambda instance: the handler's
module-level state (the resolver's current event) is not shared between
concurrent requests in real Lambda either.
"""

from __future__ import annotations

import base64
import contextlib
import json
import mimetypes
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devkit.localjwt import JwtAuthorizer, Verdict
from devkit.sam import TEMPLATE, Handler

ACCOUNT_ID = "123456789012"
API_ID = "local"
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-www-form-urlencoded", "+json", "+xml")


@dataclass(frozen=True)
class Route:
    method: str  # GET, ..., or ANY
    path: str  # as in the template: /orders/{orderId}, /files/{proxy+}
    pattern: re.Pattern[str]
    static: int  # literal characters: more specific routes win, as in API Gateway
    authorizer: str | None = None  # the HttpApi authorizer the route names, if any
    scopes: tuple[str, ...] = ()  # its AuthorizationScopes: the token needs one of them

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @classmethod
    def parse(cls, method: str, path: str, authorizer: str | None = None, scopes: tuple[str, ...] = ()) -> Route:
        regex, static = "", 0
        for part in re.split(r"(\{[^}]+\})", path):
            if part.startswith("{") and part.endswith("+}"):
                regex += f"(?P<{part[1:-2]}>.+)"
            elif part.startswith("{"):
                regex += f"(?P<{part[1:-1]}>[^/]+)"
            else:
                regex += re.escape(part)
                static += len(part)
        return cls(method.upper(), path, re.compile(f"^{regex}$"), static, authorizer, scopes)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in (method, "ANY"):
            return None
        found = self.pattern.match(path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items()}


def http_routes(logical_id: str, parameters: Mapping[str, str] | None = None, template: Path = TEMPLATE) -> list[Route]:
    """The function's HttpApi routes, with the authorizer and scopes each names."""
    from devkit.esm.mapping import read_resource

    events: Mapping[str, Any] = (read_resource(logical_id, parameters, template) or {}).get("Events") or {}
    routes = []
    for event in events.values():
        properties = event.get("Properties") or {}
        if event.get("Type") != "HttpApi" or "Path" not in properties:
            continue
        auth = properties.get("Auth") or {}
        authorizer = auth.get("Authorizer")
        routes.append(
            Route.parse(
                str(properties.get("Method", "ANY")),
                str(properties["Path"]),
                None if authorizer in (None, "NONE") else str(authorizer),
                tuple(str(s) for s in auth.get("AuthorizationScopes") or ()),
            )
        )
    return sorted(routes, key=lambda r: (-r.static, r.method == "ANY"))


@dataclass(frozen=True)
class CorsRules:
    """An HTTP API's CorsConfiguration."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    def allows(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin.lower() in (o.lower() for o in self.allow_origins)

    def preflight(self, origin: str, headers: Mapping[str, str]) -> HttpReply:
        """API Gateway's own answer to a preflight, whatever the routes."""
        answer: list[tuple[str, str]] = []
        method = headers.get("access-control-request-method", "").upper()
        if self.allows(origin) and (method in self.allow_methods or "*" in self.allow_methods):
            answer = [("access-control-allow-origin", origin)]
            answer.append(("access-control-allow-methods", ",".join(self.allow_methods)))
            if self.allow_headers:
                answer.append(("access-control-allow-headers", ",".join(h.lower() for h in self.allow_headers)))
            if self.max_age is not None:
                answer.append(("access-control-max-age", str(self.max_age)))
            if self.allow_credentials:
                answer.append(("access-control-allow-credentials", "true"))
        return HttpReply(204, answer, b"")

    def apply(self, origin: str | None, reply: HttpReply) -> HttpReply:
        """The configured CORS headers in place of any the function sent."""
        headers = [(k, v) for k, v in reply.headers if not k.lower().startswith("access-control-")]
        if origin and self.allows(origin):
            headers.append(("access-control-allow-origin", origin))
            if self.expose_headers:
                headers.append(("access-control-expose-headers", ",".join(h.lower() for h in self.expose_headers)))
            if self.allow_credentials:
                headers.append(("access-control-allow-credentials", "true"))
        return HttpReply(reply.status, headers, reply.body)


@dataclass(frozen=True)
class HttpApiSettings:
    """What the HTTP API itself does before and after the function: CORS and authorizers."""

    cors: CorsRules | None = None
    authorizers: Mapping[str, JwtAuthorizer] = field(default_factory=dict)

    @classmethod
    def from_template(
        cls,
        key_set: Mapping[str, Any],
        parameters: Mapping[str, str] | None = None,
        logical_id: str = "HttpApi",
        template: Path = TEMPLATE,
    ) -> HttpApiSettings:
        """The HttpApi's CorsConfiguration and JWT authorizers, parameters and conditions resolved;
        the authorizers trust `key_set` (a JWKS), where API Gateway fetches the issuer's."""
        from devkit.esm.mapping import read_resource

        properties = read_resource(logical_id, parameters, template) or {}
        cors = properties.get("CorsConfiguration")
        rules = None
        if isinstance(cors, dict):
            rules = CorsRules(
                allow_origins=tuple(cors.get("AllowOrigins") or ()),
                allow_methods=tuple(m.upper() for m in cors.get("AllowMethods") or ()),
                allow_headers=tuple(cors.get("AllowHeaders") or ()),
                expose_headers=tuple(cors.get("ExposeHeaders") or ()),
                max_age=int(cors["MaxAge"]) if cors.get("MaxAge") is not None else None,
                allow_credentials=str(cors.get("AllowCredentials", "false")).lower() == "true",
            )
        authorizers = {}
        for name, spec in ((properties.get("Auth") or {}).get("Authorizers") or {}).items():
            jwt_config = spec.get("JwtConfiguration")
            if not jwt_config:
                continue  # a Lambda or IAM authorizer: not run locally
            source = str(spec.get("IdentitySource", "$request.header.Authorization"))
            audience = jwt_config.get("audience") or []
            authorizers[name] = JwtAuthorizer.from_jwks(
                str(jwt_config["issuer"]),
                [audience] if isinstance(audience, str) else [str(a) for a in audience],
                key_set,
                source.removeprefix("$request.header."),
            )
        return cls(rules, authorizers)


def build_event(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    route_key: str,
    path_parameters: Mapping[str, str] | None = None,
    source_ip: str = "127.0.0.1",
    protocol: str = "HTTP/1.1",
    authorizer: Mapping[str, Any] | None = None,
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
    if authorizer is not None:
        event["requestContext"]["authorizer"] = dict(authorizer)
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


def _message(status: HTTPStatus, www_authenticate: str | None = None) -> HttpReply:
    body = json.dumps({"message": status.phrase}).encode()  # API Gateway's own error shape
    headers = [("content-type", "application/json")]
    if www_authenticate:
        headers.append(("www-authenticate", www_authenticate))
    return HttpReply(status.value, headers, body)


def _lowered(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    return joined


class LocalGateway:
    """Routes a request like API Gateway and invokes the handler with the v2 event."""

    def __init__(
        self,
        handler: Handler,
        routes: list[Route],
        context_factory: Callable[[], Any],
        local_routes: Iterable[str] = ("GET /swagger",),
        api: HttpApiSettings | None = None,
        static_dir: Path | None = None,
        extras: Mapping[str, Callable[[], Any]] | None = None,
    ):
        self.handler, self.routes, self.context_factory = handler, routes, context_factory
        self.local_routes = [Route.parse(m, p) for m, p in (r.split(" ", 1) for r in local_routes)]
        self.api = api  # None: plain routing, no CORS and no authorizer (the function alone, in tests)
        self.static_dir = static_dir.resolve() if static_dir is not None else None
        self.extras = dict(extras or {})
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
        """The event for this request, or None when API Gateway would answer 404 itself
        (authorizers aside: `request` runs them)."""
        found = self._route(method, urlsplit(target).path)
        if found is None:
            return None
        route_key, parameters, _ = found
        return build_event(method, target, headers, body, route_key, parameters, ip)

    def _route(self, method: str, path: str) -> tuple[str, dict[str, str] | None, Route | None] | None:
        for route in self.routes:
            parameters = route.match(method, path)
            if parameters is not None:
                return route.key, parameters, route
        if any(r.match(method, path) is not None for r in self.local_routes):
            return "$default", None, None
        return None

    def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        ip: str = "127.0.0.1",
    ) -> HttpReply:
        headers = list(headers)
        lowered = _lowered(headers)
        origin = lowered.get("origin")
        cors = self.api.cors if self.api is not None else None
        if cors is not None and method == "OPTIONS" and origin and "access-control-request-method" in lowered:
            return cors.preflight(origin, lowered)  # answered by API Gateway, whatever the routes
        reply = self._answer(method, target, headers, lowered, body, ip)
        return cors.apply(origin, reply) if cors is not None else reply

    def _answer(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        lowered: Mapping[str, str],
        body: bytes,
        ip: str,
    ) -> HttpReply:
        path = urlsplit(target).path
        found = self._route(method, path)
        if found is None:
            return self._local(method, path) or _message(HTTPStatus.NOT_FOUND)
        route_key, parameters, route = found
        context = None
        if self.api is not None and route is not None and route.authorizer is not None:
            verdict = self._authorize(route, lowered)
            if verdict.status != 200:
                status = HTTPStatus.FORBIDDEN if verdict.status == 403 else HTTPStatus.UNAUTHORIZED
                return _message(status, verdict.www_authenticate)
            context = verdict.context()
        event = build_event(method, target, headers, body, route_key, parameters, ip, authorizer=context)
        try:
            with self._invoke_lock:
                self.last_event = event
                result = self.handler(event, self.context_factory())
            return reply_from(result)
        except Exception as error:  # what API Gateway answers when the function fails
            print(f"handler failed: {error!r}", file=sys.stderr)
            return _message(HTTPStatus.INTERNAL_SERVER_ERROR)

    def _authorize(self, route: Route, headers: Mapping[str, str]) -> Verdict:
        authorizer = self.api.authorizers.get(route.authorizer or "") if self.api is not None else None
        if authorizer is None:  # a route naming an authorizer this gateway was not given: closed
            return Verdict(401, www_authenticate="Bearer")
        return authorizer.authorize(headers, route.scopes)

    def _local(self, method: str, path: str) -> HttpReply | None:
        """The local stack's own answers: `extras`, then the static pages."""
        if method not in ("GET", "HEAD"):
            return None
        if path in self.extras:
            body = json.dumps(self.extras[path]()).encode()
            return HttpReply(200, [("content-type", "application/json"), ("cache-control", "no-store")], body)
        if self.static_dir is None:
            return None
        relative = unquote(path).lstrip("/") or "index.html"
        file = (self.static_dir / relative).resolve()
        if not file.is_relative_to(self.static_dir) or not file.is_file():
            return None
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        return HttpReply(200, [("content-type", content_type), ("cache-control", "no-cache")], file.read_bytes())


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
