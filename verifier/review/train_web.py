"""The training pages (``/ui/train``): a trainer (review or admin token) starts sessions and follows results; a
trainee opens the session's link (an unguessable id: no token, only a name) and answers image after image."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from verifier.audit.tokens import TokenScope
from verifier.errors import InputError, MedverifyError
from verifier.review.training import ANSWERS, TrainingPlan, TrainingStore
from verifier.review.web import _config, _render, _session, _user

if TYPE_CHECKING:
    from verifier.review.config import ReviewConfig

__all__ = ["train_router"]

train_router = APIRouter(prefix="/ui/train", include_in_schema=False)


def _training(request: Request) -> tuple[ReviewConfig, TrainingStore]:
    review = _config(request)[1]
    if review.training is None:
        raise HTTPException(404, detail="training is not set up on this server (no training_corpus)")
    return review, review.training


@train_router.get("")
async def trainer_page(request: Request, error: str = "") -> Response:
    session, token = await run_in_threadpool(_session, request)
    _review, store = _training(request)
    sessions = await run_in_threadpool(store.sessions)
    return _render("train_trainer.html.j2", request, user=_user(token, session), sessions=sessions, error=error,
                   kinds=ANSWERS)  # fmt: skip


@train_router.post("")
async def start_session(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    n: Annotated[int, Form()] = 6,
    real: Annotated[float, Form()] = 1.0,
    synthetic: Annotated[float, Form()] = 1.0,
    tampered: Annotated[float, Form()] = 1.0,
    modalities: Annotated[str, Form()] = "",
) -> Response:
    session, token = await run_in_threadpool(_session, request)
    review, store = _training(request)
    if csrf != session.csrf:
        raise HTTPException(403, detail="the form is stale; reload the page")
    if token.scope not in (TokenScope.REVIEW, TokenScope.ADMIN):
        raise HTTPException(403, detail=f"a {token.scope.value} token may look but not start training sessions")
    if review.detector is None or review.settings is None:
        raise HTTPException(503, detail="training needs the detector and the key store")
    detector, settings = review.detector, review.settings
    wanted = tuple(m.strip().upper() for m in modalities.split(",") if m.strip())

    def make() -> str:
        from verifier.setup import open_generation_keys

        plan = TrainingPlan(n=n, mix={"real": real, "synthetic": synthetic, "tampered": tampered},
                            modalities=wanted)  # fmt: skip
        keys = open_generation_keys(settings)
        try:
            return store.create(plan, keys=keys, detector=detector, trainer=f"token {token.id} ({token.name})")
        finally:
            keys.log.close()

    try:
        session_id = await run_in_threadpool(make)
    except MedverifyError as exc:
        return RedirectResponse("/ui/train?" + urllib.parse.urlencode({"error": exc.diagnostics()}), 303)
    return RedirectResponse(f"/ui/train?started={session_id}", status_code=303)


def _load(store: TrainingStore, session_id: str) -> dict[str, Any]:
    try:
        return store.load(session_id)
    except InputError as exc:
        raise HTTPException(404, detail=exc.diagnostics()) from None


@train_router.get("/s/{session_id}")
async def trainee_page(request: Request, session_id: str) -> Response:
    """The next unanswered image, or the name prompt first, or the results at the end."""
    _review, store = _training(request)
    data = await run_in_threadpool(_load, store, session_id)
    items = data["items"]
    pending = next((i for i, item in enumerate(items) if item.get("answer") is None), None)
    return _render("train_session.html.j2", request, user=None, s=data, index=pending, total=len(items),
                   scores=store.scores(data), kinds=ANSWERS)  # fmt: skip


@train_router.post("/s/{session_id}/name")
async def trainee_name(request: Request, session_id: str, name: Annotated[str, Form()] = "") -> Response:
    _review, store = _training(request)
    try:
        await run_in_threadpool(store.set_trainee, session_id, name)
    except InputError as exc:
        raise HTTPException(400 if "name" in exc.diagnostics() else 404, detail=exc.diagnostics()) from None
    return RedirectResponse(f"/ui/train/s/{session_id}", status_code=303)


@train_router.post("/s/{session_id}/answer/{index}")
async def trainee_answer(
    request: Request,
    session_id: str,
    index: int,
    answer: Annotated[str, Form()],
    x: Annotated[str, Form()] = "",
    y: Annotated[str, Form()] = "",
) -> Response:
    _review, store = _training(request)
    click = None
    try:
        if x and y:
            click = (min(1.0, max(0.0, float(x))), min(1.0, max(0.0, float(y))))
    except ValueError:
        click = None
    try:
        await run_in_threadpool(store.answer, session_id, index, answer, click)
    except InputError as exc:
        raise HTTPException(400, detail=exc.diagnostics()) from None
    return RedirectResponse(f"/ui/train/s/{session_id}/feedback/{index}", status_code=303)


@train_router.get("/s/{session_id}/feedback/{index}")
async def trainee_feedback(request: Request, session_id: str, index: int) -> Response:
    _review, store = _training(request)
    data = await run_in_threadpool(_load, store, session_id)
    if not 0 <= index < len(data["items"]) or data["items"][index].get("answer") is None:
        return RedirectResponse(f"/ui/train/s/{session_id}", status_code=303)
    item = data["items"][index]
    return _render("train_feedback.html.j2", request, user=None, s=data, index=index, item=item,
                   total=len(data["items"]), giveaway=store.giveaway(item))  # fmt: skip


@train_router.get("/s/{session_id}/img/{index}/{kind}.png")
async def trainee_picture(request: Request, session_id: str, index: int, kind: str) -> Response:
    _review, store = _training(request)
    try:
        path: Path = await run_in_threadpool(store.image, session_id, index, kind)
    except InputError as exc:
        raise HTTPException(404, detail=exc.diagnostics()) from None
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
