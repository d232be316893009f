"""The routes' shared dependencies: the server state and the keys, as ``Annotated`` aliases.

The keys use FastAPI's security classes, so ``/docs`` shows them and its "Authorize" button
works. The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its
thread pool, two thread hops per request for a dictionary lookup.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from serve.errors import ApiError
from serve.state import ServerState

bearer_scheme = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")


async def get_state(request: Request) -> ServerState:
    return request.app.state.server


StateDep = Annotated[ServerState, Depends(get_state)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
HeaderKey = Annotated[str | None, Security(api_key_scheme)]


def _check(supplied: str | None, key: str) -> None:
    if not _matches(supplied, key):
        reason = "wrong API key" if supplied else "missing API key"
        raise ApiError(
            401,
            "unauthorized",
            f"{reason}: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
            {"WWW-Authenticate": 'Bearer realm="vit"'},
        )


def _supplied(bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str | None:
    return header or (bearer.credentials.strip() if bearer else None)


def _matches(supplied: str | None, key: str) -> bool:
    if not supplied:
        return False
    return hmac.compare_digest(supplied.encode(), key.encode())


def key_matches(scope: dict[str, Any], key: str | None) -> bool:
    """Whether a request's headers carry ``key`` as the dependencies read it (True without a key).

    For :mod:`serve.fastpath`, which reads the headers without FastAPI; a request this refuses
    goes on to :func:`require_key`, which answers it.
    """
    if not key:
        return True
    headers = Headers(scope=scope)
    scheme, _, token = headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    return _matches(headers.get(api_key_scheme.model.name) or bearer, key)


async def require_key(state: StateDep, bearer: Bearer, header: HeaderKey) -> None:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` when the server has a key."""
    key = state.settings.key
    if key:
        _check(_supplied(bearer, header), key)


async def require_admin(state: StateDep, bearer: Bearer, header: HeaderKey) -> None:
    """The admin key (``--admin-key``, else the API key); admin routes are off without one."""
    key = state.settings.admin
    if not key:
        raise ApiError(
            403,
            "forbidden",
            "admin routes need a server started with --api-key or --admin-key; or send SIGHUP",
        )
    _check(_supplied(bearer, header), key)


Keyed = [Depends(require_key)]
Admin = [Depends(require_admin)]
