"""The local gateway applies the template's HTTP API settings as API Gateway does: the JWT
authorizer on orders and the operator's route, CORS on every answer, the pages in web/.
The function behind it is the real ApiFunction on a real Valkey."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from cachesync import keys
from devkit import localjwt
from devkit.apigw import HttpApiSettings, LocalGateway, http_routes
from devkit.localrun import WEB_DIR
from devkit.sam import LocalContext
from tests.api.apikit import ORIGIN, OTHER_ORIGIN, Api, Reply, _reply

ORDER = b'{"ordertime":1497014222380,"orderid":18,"itemid":"Item_184"}'
ADMIN_SCOPE = "cachesync/admin"  # the template's AdminScope default
STAFF_SCOPE = "cachesync/staff"  # the template's StaffScope default
PARAMETERS = {
    "JwtIssuer": localjwt.LOCAL_ISSUER,
    "JwtAudience": localjwt.LOCAL_AUDIENCE,
    "CorsAllowedOrigins": f"{ORIGIN},{OTHER_ORIGIN}",
}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return localjwt.signing_key(tmp_path_factory.mktemp("jwt") / "key.pem")


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return localjwt.signing_key(tmp_path_factory.mktemp("jwt") / "other.pem")


class Gateway:
    def __init__(self, api: Api, settings: HttpApiSettings, parameters: dict[str, str]):
        self.api = api
        self.gateway = LocalGateway(
            api.handler,
            http_routes("ApiFunction", parameters),
            lambda: LocalContext(api.function),
            api=settings,
            static_dir=WEB_DIR,
        )

    def get(self, target: str, token: str | None = None, method: str = "GET", **headers: str) -> Reply:
        sent = [(k.replace("_", "-"), v) for k, v in headers.items()]
        if token is not None:
            sent.append(("Authorization", f"Bearer {token}"))
        return _reply(self.gateway.request(method, target, sent))


@pytest.fixture(scope="module")
def make_gateway(load_api: Callable[..., Api], api_valkey: Any, key: Any) -> Callable[..., Gateway]:
    def make(redis_url: str | None = None, **parameters: str) -> Gateway:
        chosen = {**PARAMETERS, **parameters}
        api = load_api(redis_url or api_valkey.url, parameters)
        return Gateway(api, HttpApiSettings.from_template(localjwt.jwks(key), chosen), chosen)

    return make


@pytest.fixture(scope="module")
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()


@pytest.fixture
def order(store: redis.Redis) -> None:
    store.set(keys.order_key("18"), ORDER)


def shopper(key: Any, subject: str = "shopper-1", **claims: Any) -> str:
    return localjwt.mint(key, subject, **claims)


def staff(key: Any, **claims: Any) -> str:
    return localjwt.mint(key, "staff-1", scopes=["openid", STAFF_SCOPE], **claims)


# --- the authorizer -------------------------------------------------------------------------
def test_a_valid_token_reads_an_order_and_its_claims_reach_the_function(
    gateway: Gateway, key: Any, order: None
) -> None:
    reply = gateway.get("/orders/18", token=staff(key, email="a@example.com"))
    assert reply.status == 200 and reply.body == ORDER
    event = gateway.gateway.last_event
    assert event is not None
    claims = event["requestContext"]["authorizer"]["jwt"]["claims"]
    assert claims["sub"] == "staff-1" and claims["email"] == "a@example.com"
    assert claims["iss"] == localjwt.LOCAL_ISSUER and isinstance(claims["exp"], str)  # strings, as API Gateway sends


def test_the_token_may_come_without_bearer(gateway: Gateway, key: Any, order: None) -> None:
    reply = _reply(gateway.gateway.request("GET", "/orders/18", [("authorization", staff(key))]))
    assert (reply.status, reply.body) == (200, ORDER)


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no token", None),
        ("expired", "the token has expired"),
        ("not yet valid", "the token is not valid yet"),
        ("wrong audience", "the token does not have a valid audience"),
        ("wrong issuer", "the token does not have a valid issuer"),
        ("another key", "the token's signature is not valid"),
        ("unknown kid", "the token's kid is not one of the issuer's keys"),
        ("not a jwt", "the token is not a valid JWT"),
        ("HS256", "the token is not signed with an RSA algorithm"),
    ],
)
def test_orders_refuse_a_missing_or_bad_token_with_401(
    gateway: Gateway, key: Any, other_key: Any, order: None, case: str, why: str | None
) -> None:
    now = time.time()
    kid = localjwt.public_jwk(key)["kid"]
    tokens: dict[str, str | None] = {
        "no token": None,
        "expired": localjwt.mint(key, "s", now=now - 7200, lifetime_s=3600),
        "not yet valid": localjwt.mint(key, "s", nbf=int(now) + 600),
        "wrong audience": localjwt.mint(key, "s", audience="another-app"),
        "wrong issuer": localjwt.mint(key, "s", issuer="https://evil.example"),
        # signed by another key under this key's kid: the signature check, not the kid, refuses it
        "another key": _with_kid(localjwt.mint(other_key, "s"), kid, other_key),
        "unknown kid": localjwt.mint(other_key, "s"),
        "not a jwt": "not-a-token",
        "HS256": _hs256(kid),
    }
    gateway.gateway.last_event = None
    reply = gateway.get("/orders/18", token=tokens[case])
    assert reply.status == 401, (case, reply.body)
    assert reply.json == {"message": "Unauthorized"}
    assert why is None or f'error_description="{why}"' in reply.headers["www-authenticate"]
    assert gateway.gateway.last_event is None  # refused before the function ran


def test_the_operator_route_needs_the_admin_scope(gateway: Gateway, key: Any, store: redis.Redis) -> None:
    anonymous = gateway.get("/admin/stats")
    assert (anonymous.status, anonymous.json) == (401, {"message": "Unauthorized"})
    without = gateway.get("/admin/stats", token=shopper(key))
    # a valid token without the route's scope: API Gateway answers 403, as RFC 6750 asks
    assert without.status == 403 and without.json == {"message": "Forbidden"}
    assert 'error="insufficient_scope"' in without.headers["www-authenticate"]
    other = gateway.get("/admin/stats", token=localjwt.mint(key, "op", scopes=["cachesync/read"]))
    assert (other.status, other.json) == (403, {"message": "Forbidden"})
    for token in (
        localjwt.mint(key, "op", scopes=["openid", ADMIN_SCOPE]),  # `scope`, space-separated
        localjwt.mint(key, "op", scp=[ADMIN_SCOPE]),  # `scp`, a list (Okta, Entra ID)
    ):
        reply = gateway.get("/admin/stats", token=token)
        assert reply.status == 200, reply.body
        assert set(reply.json) >= {"appliedPerSecond", "totals", "freshnessLagMs", "partitions", "deadLetters"}
        assert reply.headers["cache-control"] == "no-store"


def test_cognito_access_tokens_match_on_client_id_when_there_is_no_aud(gateway: Gateway, key: Any, order: None) -> None:
    now = int(time.time())
    payload = {"iss": localjwt.LOCAL_ISSUER, "sub": "s", "token_use": "access", "iat": now, "exp": now + 600}
    payload["scope"] = STAFF_SCOPE
    ours = gateway.get("/orders/18", token=_resign(key, {**payload, "client_id": localjwt.LOCAL_AUDIENCE}))
    assert (ours.status, ours.body) == (200, ORDER)
    theirs = gateway.get("/orders/18", token=_resign(key, {**payload, "client_id": "another-client"}))
    assert (theirs.status, theirs.json) == (401, {"message": "Unauthorized"})


def test_products_inventory_and_health_stay_public(gateway: Gateway, store: redis.Redis) -> None:
    store.set(keys.product_key("sku1"), b'{"sku":"sku1"}')
    store.zadd(keys.inventory_key("store1"), {keys.sku_member("sku1"): 3})
    product = gateway.get("/products/sku1")
    assert (product.status, product.body) == (200, b'{"sku":"sku1"}')
    products = gateway.get("/products?skus=sku1")
    assert (products.status, products.json) == (200, {"items": [{"sku": "sku1"}], "missing": []})
    stock = gateway.get("/stores/store1/inventory")
    assert stock.status == 200 and stock.json["items"] == [{"sku": "sku1", "quantity": 3}]
    health = gateway.get("/health")
    assert health.status == 200 and health.json["status"] == "ok" and health.json["redis"]["reachable"] is True


def test_the_authorizer_comes_from_the_template_parameters(
    make_gateway: Callable[..., Gateway], key: Any, order: None
) -> None:
    # the same token, checked against another issuer configured in the template's parameters
    elsewhere = make_gateway(JwtIssuer="https://idp.example.com")
    refused = elsewhere.get("/orders/18", token=shopper(key))
    assert (
        refused.status == 401
        and 'error_description="the token does not have a valid issuer"' in (refused.headers["www-authenticate"])
    )
    accepted = elsewhere.get(
        "/orders/18", token=localjwt.mint(key, "s", scopes=[STAFF_SCOPE], issuer="https://idp.example.com")
    )
    assert (accepted.status, accepted.body) == (200, ORDER)
    event = elsewhere.gateway.last_event
    assert event is not None and event["requestContext"]["authorizer"]["jwt"]["claims"]["iss"] == (
        "https://idp.example.com"
    )


# --- who reads which order ------------------------------------------------------------------
OWNED = {
    "101": b'{"orderid":101,"customer":{"id":"shopper-1"},"itemid":"Item_1"}',
    "102": b'{"orderid":102,"customer":{"id":"shopper-2"},"itemid":"Item_2"}',
    "103": b'{"orderid":103,"itemid":"Item_3"}',  # no owner: staff only
    "104": b'{"orderid":104,"customer":{"id":42}}',  # a number, matched as its text
    "105": b'{"orderid":105,"customer":{"id":true}}',  # not an id
    "106": b'{"orderid":106,"customer":"shopper-1"}',  # no `id` under it
}


@pytest.fixture
def owned_orders(store: redis.Redis) -> None:
    store.mset({keys.order_key(order_id): value for order_id, value in OWNED.items()})
    store.set(keys.order_key("18"), ORDER)


def test_without_an_ownership_rule_orders_are_for_staff_only(
    gateway: Gateway, key: Any, owned_orders: None, store: redis.Redis
) -> None:
    gets = lambda: int(store.info("commandstats").get("cmdstat_get", {}).get("calls", 0))  # noqa: E731
    before = gets()
    for token in (shopper(key), localjwt.mint(key, "op", scopes=[ADMIN_SCOPE])):
        reply = gateway.get("/orders/101", token=token)
        assert reply.status == 403, reply.body
        assert reply.json["statusCode"] == 403 and STAFF_SCOPE in reply.json["message"]
        assert reply.headers["cache-control"] == "no-cache"
    assert gets() == before  # refused without reading the cache
    for token in (staff(key), localjwt.mint(key, "cs-2", scp=[STAFF_SCOPE])):  # `scope`, or `scp` as a list
        for order_id, value in OWNED.items():
            reply = gateway.get(f"/orders/{order_id}", token=token)
            assert reply.status == 200 and reply.body == value, order_id
    assert gateway.get("/orders/999", token=staff(key)).status == 404


def test_with_an_ownership_rule_a_shopper_reads_only_their_own_orders(
    make_gateway: Callable[..., Gateway], key: Any, owned_orders: None
) -> None:
    rule = make_gateway(OrderOwnerField="customer.id")  # matched against `sub`, the default claim
    assert rule.get("/orders/101", token=shopper(key, "shopper-1")).body == OWNED["101"]
    assert rule.get("/orders/102", token=shopper(key, "shopper-2")).body == OWNED["102"]
    assert rule.get("/orders/104", token=shopper(key, "42")).body == OWNED["104"]
    missing = rule.get("/orders/999", token=shopper(key, "shopper-1"))
    assert missing.status == 404
    for order_id, subject in (("102", "shopper-1"), ("101", "shopper-2"), ("103", "shopper-1"), ("105", "true"),
                              ("106", "shopper-1"), ("101", "SHOPPER-1"), ("18", "shopper-1")):  # fmt: skip
        reply = rule.get(f"/orders/{order_id}", token=shopper(key, subject))
        # another's order answers as a missing one: the same status and words, so an id tells nothing
        assert reply.status == 404, (order_id, subject)
        assert reply.json["message"] == missing.json["message"].replace("999", order_id)
    for order_id, value in OWNED.items():  # staff still read every order
        assert rule.get(f"/orders/{order_id}", token=staff(key)).body == value


def test_the_ownership_claim_is_a_parameter_and_a_token_without_it_is_403(
    make_gateway: Callable[..., Gateway], key: Any, owned_orders: None
) -> None:
    by_email = make_gateway(OrderOwnerField="customer.id", OrderOwnerClaim="email")
    reply = by_email.get("/orders/101", token=shopper(key, "someone", email="shopper-1"))
    assert reply.status == 200 and reply.body == OWNED["101"]
    assert by_email.get("/orders/101", token=shopper(key, "shopper-1", email="x@example.com")).status == 404
    refused = by_email.get("/orders/101", token=shopper(key, "shopper-1"))  # no email claim at all
    assert refused.status == 403 and "email" in refused.json["message"]


def test_the_staff_scope_is_a_parameter(make_gateway: Callable[..., Gateway], key: Any, owned_orders: None) -> None:
    support = make_gateway(StaffScope="orders/read-any")
    assert support.get("/orders/101", token=staff(key)).status == 403
    assert support.get("/orders/101", token=localjwt.mint(key, "cs", scopes=["orders/read-any"])).status == 200


def test_an_order_request_the_authorizer_did_not_pass_is_401(api: Api, store: redis.Redis) -> None:
    # deployed, the route always has the authorizer; invoked without it, the function fails closed
    store.set(keys.order_key("18"), ORDER)
    reply = api.get("/orders/18")
    assert reply.status == 401 and reply.json["statusCode"] == 401


# --- CORS -----------------------------------------------------------------------------------
def test_preflights_are_answered_by_the_gateway_from_the_template(gateway: Gateway) -> None:
    for origin in (ORIGIN, OTHER_ORIGIN):
        reply = gateway.get(
            "/orders/18", method="OPTIONS", Origin=origin, Access_Control_Request_Method="GET",
            Access_Control_Request_Headers="authorization",
        )  # fmt: skip
        assert reply.status == 204  # before the authorizer: a preflight carries no token
        assert reply.headers["access-control-allow-origin"] == origin
        assert set(reply.headers["access-control-allow-methods"].split(",")) == {"GET", "OPTIONS"}
        assert "authorization" in reply.headers["access-control-allow-headers"].split(",")
        assert reply.headers["access-control-max-age"] == "600"
    stranger = gateway.get(
        "/orders/18", method="OPTIONS", Origin="https://evil.example", Access_Control_Request_Method="GET"
    )
    assert not any(h.startswith("access-control-") for h in stranger.headers)


def test_every_answer_carries_the_cors_headers_and_exposes_retry_after(
    gateway: Gateway, make_gateway: Callable[..., Gateway], key: Any, order: None
) -> None:
    answers = [
        gateway.get("/orders/18", token=staff(key), Origin=ORIGIN),
        gateway.get("/orders/18", Origin=ORIGIN),  # the authorizer's 401: the page must read it
        gateway.get("/orders/18", token=shopper(key), Origin=ORIGIN),  # the function's 403
        gateway.get("/products/nope", Origin=ORIGIN),  # the function's 404
    ]
    # Redis unreachable: the 503's Retry-After must be readable cross-origin
    closed_port = "redis://127.0.0.1:1/0"
    unavailable = make_gateway(redis_url=closed_port).get("/stores/store1/inventory", Origin=ORIGIN)
    assert unavailable.status == 503 and unavailable.headers["retry-after"]
    for reply in [*answers, unavailable]:
        assert reply.headers["access-control-allow-origin"] == ORIGIN
        assert reply.headers["access-control-expose-headers"] == "retry-after"
    assert [r.status for r in answers] == [200, 401, 403, 404]
    stranger = gateway.get("/health", Origin="https://evil.example")
    assert stranger.status == 200 and not any(h.startswith("access-control-") for h in stranger.headers)


def test_no_origins_no_cors(make_gateway: Callable[..., Gateway]) -> None:
    closed = make_gateway(CorsAllowedOrigins="")
    reply = closed.get("/health", Origin=ORIGIN)
    assert reply.status == 200 and not any(h.startswith("access-control-") for h in reply.headers)
    # no CorsConfiguration: no preflight answer, and no OPTIONS route either
    preflight = closed.get("/health", method="OPTIONS", Origin=ORIGIN, Access_Control_Request_Method="GET")
    assert (preflight.status, preflight.json) == (404, {"message": "Not Found"})


# --- the pages ------------------------------------------------------------------------------
def test_the_pages_are_served_and_nothing_beside_them(gateway: Gateway) -> None:
    page = gateway.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"<title>cachesync shop</title>" in page.body
    admin = gateway.get("/admin.html")
    assert admin.status == 200 and admin.headers["content-type"].startswith("text/html")
    assert "<title>Operations · cachesync</title>".encode() in admin.body
    script = gateway.get("/app.js")
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.body == (WEB_DIR / "app.js").read_bytes()
    for outside in ("/../template.yaml", "/%2e%2e/template.yaml", "/..%2Fdevkit/apigw.py", "/nope.html"):
        refused = gateway.get(outside)
        assert (refused.status, refused.json) == (404, {"message": "Not Found"}), outside


# --- helpers --------------------------------------------------------------------------------
def _segment(token: str, index: int) -> bytes:
    import base64

    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _resign(key: Any, payload: dict[str, Any]) -> str:
    import jwt

    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": localjwt.public_jwk(key)["kid"]})


def _with_kid(token: str, kid: str, signer: Any) -> str:
    import jwt

    return jwt.encode(json.loads(_segment(token, 1)), signer, algorithm="RS256", headers={"kid": kid})


def _hs256(kid: str) -> str:
    import jwt

    payload = {"iss": localjwt.LOCAL_ISSUER, "aud": localjwt.LOCAL_AUDIENCE, "exp": int(time.time()) + 600}
    return jwt.encode(payload, "a-shared-secret-long-enough-for-hs256!", algorithm="HS256", headers={"kid": kid})
