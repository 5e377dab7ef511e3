"""The operational endpoints: `GET /v1/models`, `GET /health`, `GET /metrics`, and the admin endpoints
`POST /admin/adapters` / `DELETE /admin/adapters/{name}` (with an admin token, `Authorization: Bearer <token>`).

Admin loads read only inside the adapter roots (`adapter_roots.py`), their files in a thread beside the
engine's (the model changes between two decoding steps); the public `GET /v1/models` shows no filesystem
path and `GET /health`'s `refused` is of bounded size."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from ...adapters.reader import AdapterError
from .adapter_roots import confine
from .engine_process import EngineGone
from .errors import ApiError, one_line
from .limits import check_unicode, clip
from .metrics import CONTENT_TYPE
from .registry import UnknownAdapter
from .scheduler import ShuttingDown
from .schemas import AdapterLoadRequest, ModelCard, ModelList

router = APIRouter()


def admin(request: Request, authorization: str | None = Header(default=None)) -> None:
    token = request.app.state.settings.admin_token
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "this endpoint needs 'Authorization: Bearer <admin token>' (the server's "
                       "--admin-token / SOFTPROMPT_ADMIN_TOKEN); the header was missing or wrong.",
                       "authentication_error", {"WWW-Authenticate": "Bearer"})


def card(name: str, view, public: bool = False) -> ModelCard:
    """An adapter's card; the `public` one (`GET /v1/models`, no token) leaves out where it is read from."""
    entry = view.sources[name]
    return ModelCard(id=name, created=entry.created, source=None if public else entry.source,
                     num_virtual_tokens=entry.num_virtual_tokens, loaded=name in view.loaded)


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def models(request: Request):
    view = await request.app.state.backend.snapshot()
    return ModelList(data=[card(name, view, public=True) for name in sorted(view.sources)])


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    backend = state.backend
    view = await backend.snapshot()
    status = "ok" if backend.alive and not state.draining else "draining" if backend.alive else "engine_exited"
    body = {"status": status, "engine": backend.placement, "base_model": state.base_model,
            "adapters": len(view.sources), "adapters_loaded": len(view.loaded), "queue_depth": view.queue_depth,
            "refused": state.refused}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@router.get("/metrics")
async def prometheus(request: Request):
    state = request.app.state
    return Response(state.metrics.render() + await state.backend.engine_metrics(), media_type=CONTENT_TYPE)


@router.post("/admin/adapters", status_code=201, response_model=ModelCard, dependencies=[Depends(admin)])
async def load_adapter(body: AdapterLoadRequest, request: Request):
    state = request.app.state
    backend = state.backend
    for field_name in ("source", "subfolder", "revision"):
        check_unicode(getattr(body, field_name), field_name)
    if backend.serves(body.name):
        raise ApiError(409, f"adapter {body.name!r} is already served (from "
                       f"{clip(backend.adapters.sources[body.name].source)}); DELETE /admin/adapters/{body.name} "
                       "first.", "conflict_error", param="name")
    source = confine(body.source, body.subfolder, state.adapter_roots)
    try:
        await backend.register(body.name, source, subfolder=body.subfolder, revision=body.revision)
    except (ShuttingDown, EngineGone) as exc:
        raise ApiError(503, str(exc), "server_error") from None
    except (AdapterError, ValueError, TypeError, OSError) as exc:
        state.refused[body.name] = one_line(exc)
        field_name = "modules_to_save" if "modules_to_save" in str(exc) else "source"
        raise ApiError(422, f"adapter {body.name!r} from {clip(body.source)} was refused: {one_line(exc)}",
                       "invalid_adapter_error", param=field_name) from None
    state.refused.pop(body.name, None)
    return card(body.name, backend.adapters)


@router.delete("/admin/adapters/{name}", dependencies=[Depends(admin)])
async def unload_adapter(name: str, request: Request):
    state = request.app.state
    state.service.known(name)
    try:
        await state.backend.unload(name)
    except UnknownAdapter as exc:
        raise ApiError(404, str(exc), "not_found_error") from None
    except (ShuttingDown, EngineGone) as exc:
        raise ApiError(503, str(exc), "server_error") from None
    return {"id": name, "object": "model", "deleted": True}
