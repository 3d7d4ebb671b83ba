"""JWT: HS256 with a shared secret, RS256 against a JWKS the test serves itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from tests.plugins.gateway import SECRET, JwksServer, bearer, hs256_token

MODULE = '''
import forge_node as forge

@forge.query
def whoami(ctx, args):
    return ctx.auth["sub"]

@forge.query(public=True)
def anyone(ctx, args):
    return "hello"
'''


def code_of(result):
    return result.status_code, result.json.get("error", {}).get("code")


@pytest.fixture
def hs(gateway):
    return gateway(MODULE, auth={"jwt_secret": SECRET, "jwt_issuer": "https://issuer.test",
                                 "jwt_audience": "shop"})


def claims(**extra):
    return {"iss": "https://issuer.test", "aud": "shop", **extra}


def test_a_valid_token_is_accepted(hs):
    result = hs.rpc("whoami", headers=bearer(hs256_token(claims(sub="ada"))))
    assert result.status_code == 200 and result.json["data"] == "ada"


@pytest.mark.parametrize("token", [
    pytest.param(lambda: hs256_token(claims(), ttl=-120), id="expired"),
    pytest.param(lambda: hs256_token(claims(), secret="another-secret-that-is-32-bytes-long!"),
                 id="wrong-signature"),
    pytest.param(lambda: hs256_token(claims(iss="https://evil.test")), id="wrong-issuer"),
    pytest.param(lambda: hs256_token(claims(aud="other")), id="wrong-audience"),
    pytest.param(lambda: hs256_token(claims(nbf=int(time.time()) + 600)), id="not-yet-valid"),
    pytest.param(lambda: _unsigned(claims(sub="x", exp=int(time.time()) + 60)), id="alg-none"),
    pytest.param(lambda: jwt.encode({"alg": "HS512"}, claims(exp=int(time.time()) + 60),
                                    OctKey.import_key(SECRET), algorithms=["HS512"]),
                 id="wrong-alg"),
    pytest.param(lambda: _without_exp(), id="no-exp"),
    pytest.param(lambda: "not.a.token", id="garbage"),
])
def test_bad_tokens_are_unauthorized_even_for_public_functions(hs, token):
    for name in ("whoami", "anyone"):
        assert code_of(hs.rpc(name, headers=bearer(token()))) == (401, "UNAUTHORIZED"), name


def test_a_malformed_authorization_header_is_unauthorized(hs):
    assert code_of(hs.rpc("anyone", headers={"Authorization": "Basic abc"})) == \
        (401, "UNAUTHORIZED")


def test_the_leeway_accepts_a_token_expired_a_moment_ago(hs):
    result = hs.rpc("whoami", headers=bearer(hs256_token(claims(sub="ada"), ttl=-5)))
    assert result.status_code == 200


def _b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _unsigned(payload):
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."


def _without_exp():
    return jwt.encode({"alg": "HS256"}, claims(sub="x"), OctKey.import_key(SECRET))


@pytest.fixture
def jwks():
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture
def rs(gateway, jwks):
    return gateway(MODULE, auth={"jwt_algorithm": "RS256", "jwks_url": jwks.url})


def test_rs256_tokens_verify_against_the_jwks(rs, jwks):
    result = rs.rpc("whoami", headers=bearer(jwks.token(jwks.keys[0])))
    assert result.status_code == 200 and result.json["data"] == "rs-user"
    rs.rpc("whoami", headers=bearer(jwks.token(jwks.keys[0])))
    assert jwks.fetches == 1, "keys are cached"


def test_an_unknown_kid_fetches_the_keys_again(rs, jwks, monkeypatch):
    monkeypatch.setattr("forge_node.auth.JWKS_REFRESH_MIN_SECS", 0.0)
    assert rs.rpc("whoami", headers=bearer(jwks.token(jwks.keys[0]))).status_code == 200
    rotated = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    jwks.keys.append(rotated)
    assert rs.rpc("whoami", headers=bearer(jwks.token(rotated))).status_code == 200
    assert jwks.fetches == 2


def test_a_key_that_is_not_in_the_jwks_is_unauthorized(rs, jwks):
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    assert code_of(rs.rpc("whoami", headers=bearer(jwks.token(stranger)))) == \
        (401, "UNAUTHORIZED")


def test_an_hs256_token_signed_with_the_public_key_is_refused(rs, jwks):
    public_pem = jwks.keys[0].as_pem(private=False)
    signing_input = f"{_b64({'alg': 'HS256', 'kid': 'k1'})}." \
                    f"{_b64({'sub': 'mallory', 'exp': int(time.time()) + 300})}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert code_of(rs.rpc("whoami", headers=bearer(forged))) == (401, "UNAUTHORIZED")


def test_an_unreachable_jwks_is_service_unavailable(gateway):
    gw = gateway(MODULE, auth={"jwt_algorithm": "RS256",
                               "jwks_url": "http://127.0.0.1:9/jwks.json"})
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    token = jwt.encode({"alg": "RS256", "kid": "k1"}, {"sub": "x", "exp": int(time.time()) + 60},
                       key)
    assert code_of(gw.rpc("whoami", headers=bearer(token))) == (503, "SERVICE_UNAVAILABLE")
