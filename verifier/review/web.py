"""The review pages of ``medverify serve`` (``/ui/...``): server-rendered Jinja2, a few lines of plain JS.

Access uses the API's tokens: a page without a session redirects to the token prompt (``/ui/login``); any token
that may look (review, audit-read, admin) sees the quarantine, only review and admin tokens may release or reject.
Every form carries the session's form token; a decision names the reviewer's token id in its audit record.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import jinja2
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from verifier.audit import Channel
from verifier.audit.tokens import AuthStatus, TokenInfo, TokenScope
from verifier.errors import AuditError, InputError
from verifier.review.config import ReviewConfig
from verifier.review.desk import AlreadyDecided, Decision, Entry, NoSuchEntry, Reviewer, ReviewError
from verifier.review.render import RenderError, frame_png, header_rows, heatmap_png, open_image, parse
from verifier.review.sessions import COOKIE, Session
from verifier.review.views import audit_rows, labelled_rows, proof_view

if TYPE_CHECKING:
    from verifier.api import ApiConfig

__all__ = ["install", "login_redirect", "router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_PAGE_SIZE = 25


class _LoginNeeded(Exception):
    def __init__(self, target: str) -> None:
        self.target = target


def _config(request: Request) -> tuple[ApiConfig, ReviewConfig]:
    config: ApiConfig | None = request.app.state.config
    if config is None or config.review is None:
        raise HTTPException(404, detail="this server has no review pages")
    return config, config.review


def _session(request: Request) -> tuple[Session, TokenInfo]:
    """The session's token, checked now; :class:`_LoginNeeded` without a valid one."""
    config, review = _config(request)
    session = review.sessions.get(request.cookies.get(COOKIE))
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if session is None:
        raise _LoginNeeded(target)
    result = config.tokens.authenticate(session.token)
    if result.status is not AuthStatus.OK or result.token is None:
        review.sessions.end(session.id)
        raise _LoginNeeded(target)
    if not result.token.scope.can_look:
        raise HTTPException(403, detail=f"a {result.token.scope.value} token cannot see the quarantine")
    return session, result.token


def _render(name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(request_path=request.url.path, **context)
    headers = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'", "Cache-Control": "no-store",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}  # fmt: skip
    return HTMLResponse(html, status_code=status, headers=headers)


def login_redirect(target: str) -> RedirectResponse:
    return RedirectResponse("/ui/login?" + urllib.parse.urlencode({"next": target}), status_code=303)


@router.get("")
@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/quarantine", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str = "/ui/quarantine", error: str = "") -> HTMLResponse:
    _config(request)
    return _render("login.html.j2", request, next=_safe_next(next), error=error, user=None)


@router.post("/login")
async def login(
    request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/ui/quarantine"
) -> Response:
    config, review = _config(request)
    result = await run_in_threadpool(config.tokens.authenticate, token.strip())
    if result.status is not AuthStatus.OK or result.token is None:
        why = {AuthStatus.EXPIRED: "This token has expired.", AuthStatus.REVOKED: "This token is revoked."}
        message = why.get(result.status, "This is not a valid API token.")
        return _render("login.html.j2", request, status=401, next=_safe_next(next), error=message, user=None)
    session = review.sessions.start(token.strip())
    answer = RedirectResponse(_safe_next(next), status_code=303)
    answer.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                      path="/ui", max_age=int(review.sessions.ttl))  # fmt: skip
    return answer


@router.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    _config(request)[1].sessions.end(request.cookies.get(COOKIE))
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.delete_cookie(COOKIE, path="/ui")
    return answer


def _safe_next(target: str) -> str:
    """Only a path of these pages: never an absolute URL or one that leaves /ui (an open redirect)."""
    return target if target.startswith("/ui/") and "//" not in target and "\\" not in target else "/ui/quarantine"


def _user(token: TokenInfo, session: Session) -> dict[str, Any]:
    can_act = token.scope in (TokenScope.REVIEW, TokenScope.ADMIN)
    return {"id": token.id, "name": token.name, "scope": token.scope.value, "can_act": can_act, "csrf": session.csrf}


@router.get("/quarantine")
async def quarantine_list(
    request: Request, verdict: str = "", channel: str = "", since: str = "", until: str = "", page: int = 1
) -> Response:
    session, token = await run_in_threadpool(_session, request)
    review = _config(request)[1]
    page = max(1, page)
    listing = await run_in_threadpool(
        review.desk.page, verdict=verdict or None, channel=channel or None, since=since or None,
        until=until or None, offset=(page - 1) * _PAGE_SIZE, limit=_PAGE_SIZE,
    )  # fmt: skip
    query = {k: v for k, v in {"verdict": verdict, "channel": channel, "since": since, "until": until}.items() if v}
    pages = max(1, -(-listing.total // _PAGE_SIZE))
    return _render(
        "list.html.j2", request, user=_user(token, session), rows=[e.summary() for e in listing.entries],
        total=listing.total, page=page, pages=pages, filters=query,
        prev_url=_page_url(query, page - 1) if page > 1 else None,
        next_url=_page_url(query, page + 1) if page < pages else None,
        verdicts=sorted({"DECLARED_SYNTHETIC", "SUSPECTED_SYNTHETIC", "TAMPERED", "NO_EVIDENCE", "MALFORMED",
                         "UNREADABLE", verdict} - {""}),
        channels=["gateway", "orthanc-dicom", "orthanc-rest", "stow-rs"],
    )  # fmt: skip


def _page_url(query: dict[str, str], page: int) -> str:
    return "/ui/quarantine?" + urllib.parse.urlencode({**query, "page": page})


def _entry(review: ReviewConfig, entry_id: str) -> Entry:
    try:
        return review.desk.get(entry_id)
    except NoSuchEntry as exc:
        raise HTTPException(404, detail=exc.diagnostics()) from None


def _detail_context(review: ReviewConfig, entry: Entry, log: Any) -> dict[str, Any]:
    """Everything the detail page shows; a file that cannot be parsed or decoded gives ``error`` instead of the
    image and header, and the rest (the verdict file and the audit record) is still shown."""
    context: dict[str, Any] = {"entry": entry.summary(), "error": None, "frames": 0, "header": [],
                               "destination": review.desk.destination(entry),
                               "can_release": review.desk.can_release(entry)}  # fmt: skip
    sidecar = entry.sidecar or {}
    context["reports"] = [
        (title, labelled_rows(sidecar.get(key)) if isinstance(sidecar.get(key), dict) else [])
        for title, key in (("Signature", "signature"), ("Watermark", "watermark"), ("Detector", "detector"))
    ]
    context["arrivals"] = entry.arrivals
    record_id = entry.field("audit_id")
    context["record"], context["proof"] = None, None
    if isinstance(record_id, int):
        try:
            context["record"] = audit_rows(log.get(record_id).to_json_dict())
            context["proof"] = proof_view(log, record_id, review.trusted)
        except AuditError as exc:
            context["record_error"] = exc.diagnostics()
    try:
        instance = parse(review.desk.read(entry), entry.id)
        context["header"] = header_rows(instance)
        context["frames"] = int(open_image(instance).frames.shape[0])
    except (RenderError, NoSuchEntry) as exc:
        context["error"] = exc.diagnostics()
    return context


@router.get("/quarantine/{entry_id}")
async def quarantine_detail(request: Request, entry_id: str, done: str = "", problem: str = "") -> Response:
    session, token = await run_in_threadpool(_session, request)
    config, review = _config(request)
    entry = _entry(review, entry_id)
    context = await run_in_threadpool(_detail_context, review, entry, config.audit_log)
    return _render("detail.html.j2", request, user=_user(token, session), done=done, problem=problem,
                   heatmap=review.detector is not None, record_error=context.pop("record_error", None),
                   **context)  # fmt: skip


@router.get("/quarantine/{entry_id}/frame/{index}.png")
async def quarantine_frame(request: Request, entry_id: str, index: int) -> Response:
    await run_in_threadpool(_session, request)
    review = _config(request)[1]
    entry = _entry(review, entry_id)

    def draw() -> bytes:
        return frame_png(open_image(parse(review.desk.read(entry), entry.id)), index)

    try:
        png = await run_in_threadpool(draw)
    except (RenderError, NoSuchEntry) as exc:
        raise HTTPException(422, detail=exc.diagnostics()) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/quarantine/{entry_id}/heatmap.png")
async def quarantine_heatmap(request: Request, entry_id: str) -> Response:
    await run_in_threadpool(_session, request)
    review = _config(request)[1]
    detector = review.detector
    if detector is None:
        raise HTTPException(404, detail="this server has no detector")
    entry = _entry(review, entry_id)
    try:
        png, frame = await run_in_threadpool(lambda: heatmap_png(detector, parse(review.desk.read(entry), entry.id)))
    except (RenderError, NoSuchEntry) as exc:
        raise HTTPException(422, detail=exc.diagnostics()) from None
    headers = {"Cache-Control": "private, max-age=300", "X-Heatmap-Frame": str(frame)}
    return Response(png, media_type="image/png", headers=headers)


@router.post("/quarantine/{entry_id}/{action}")
async def quarantine_decide(
    request: Request,
    entry_id: str,
    action: str,
    comment: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    session, token = await run_in_threadpool(_session, request)
    review = _config(request)[1]
    if csrf != session.csrf:
        raise HTTPException(403, detail="the form is stale; reload the page")
    if token.scope not in (TokenScope.REVIEW, TokenScope.ADMIN):
        raise HTTPException(403, detail=f"a {token.scope.value} token may look but not release or reject")
    try:
        decision = Decision(action)
    except ValueError:
        raise HTTPException(404, detail="no such action") from None
    reviewer = Reviewer(label=f"token {token.id} ({token.name})", channel=Channel.API, token_id=token.id)
    target = f"/ui/quarantine/{urllib.parse.quote(entry_id)}"
    try:
        outcome = await run_in_threadpool(
            lambda: review.desk.decide(entry_id, decision, reviewer=reviewer, comment=comment)
        )
    except NoSuchEntry as exc:
        raise HTTPException(404, detail=exc.diagnostics()) from None
    except (AlreadyDecided, ReviewError, InputError) as exc:
        return RedirectResponse(target + "?" + urllib.parse.urlencode({"problem": exc.diagnostics()}), 303)
    done = f"{decision.past.capitalize()}: now in {outcome.destination} (audit record {outcome.audit_id})"
    return RedirectResponse(target + "?" + urllib.parse.urlencode({"done": done}), status_code=303)


def install(app: Any) -> None:
    """Add the review pages to ``app``: the routes, the redirect to the token prompt, and error pages (not JSON)
    for the errors of ``/ui`` routes."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from verifier.review.train_web import train_router

    app.include_router(router)
    app.include_router(train_router)

    async def login_needed(_request: Request, exc: Exception) -> Response:
        return login_redirect(exc.target if isinstance(exc, _LoginNeeded) else "/ui/quarantine")

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover - registered for this type only
            raise exc
        if not request.url.path.startswith("/ui"):
            return await http_exception_handler(request, exc)
        return _render("error.html.j2", request, status=exc.status_code, status_code=exc.status_code,
                       message=str(exc.detail), user=None)  # fmt: skip

    app.add_exception_handler(_LoginNeeded, login_needed)
    app.add_exception_handler(StarletteHTTPException, http_error)
