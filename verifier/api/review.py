"""Quarantine review in the HTTP API (``/v1/quarantine``): the same operations as the review pages and the CLI.

Looking needs a review, audit-read or admin token; releasing and rejecting a review or admin token, and a comment.
Each decision writes one audit record naming the token's id; of two concurrent decisions on one instance exactly
one succeeds, the other gets 409 with who decided.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from verifier.audit import Channel
from verifier.audit.tokens import TokenInfo
from verifier.errors import InputError
from verifier.review.desk import AlreadyDecided, Decision, NoSuchEntry, Reviewer, ReviewError

if TYPE_CHECKING:
    from verifier.review.config import ReviewConfig

__all__ = ["quarantine_router"]

_ENTRY = PathParam(pattern=r"^(intake|stow)-[0-9a-f]{64}$", description="The entry id: <bin>-<sha256>.")


class QuarantineItem(BaseModel):
    """One quarantined instance: identifiers, verdict, reasons, scores, where it came from."""

    model_config = ConfigDict(extra="allow")

    id: str
    state: str = Field(description="waiting, released or rejected.")
    sha256: str
    channel: str = Field(description="gateway, orthanc-dicom, orthanc-rest, stow-rs, ...")
    received: str
    arrivals: int
    verdict: str | None = None
    reasons: list[str]


class QuarantineList(BaseModel):
    total: int
    offset: int
    items: list[QuarantineItem]


class DecisionRequest(BaseModel):
    comment: str = Field(min_length=1, max_length=2000, description="Why (required; kept in the audit record).")


class DecisionResponse(BaseModel):
    id: str
    decision: str
    audit_id: int
    destination: str


def _review(request: Request) -> ReviewConfig:
    config = request.app.state.config
    review: ReviewConfig | None = None if config is None else config.review
    if review is None:
        raise HTTPException(503, detail="this server has no quarantine to review")
    return review


def quarantine_router(look: Any, act: Any, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    """The routes, with ``look`` and ``act`` the token dependencies (see :mod:`verifier.api.app`)."""
    router = APIRouter(prefix="/v1/quarantine", tags=["quarantine"], responses=errors)
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "No such quarantined instance."}}

    @router.get("", response_model=QuarantineList)
    async def quarantine_list(
        request: Request,
        verdict: str | None = None,
        channel: str | None = None,
        since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
        until: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        token: TokenInfo = look,
    ) -> dict[str, Any]:
        """Quarantined instances across every channel, newest first; filter by verdict, channel, arrival date."""
        desk = _review(request).desk
        page = await run_in_threadpool(desk.page, verdict=verdict, channel=channel, since=since, until=until,
                                       offset=offset, limit=limit)  # fmt: skip
        return {"total": page.total, "offset": page.offset, "items": [e.summary() for e in page.entries]}

    @router.get("/{entry_id}", response_model=QuarantineItem, responses=not_found)
    async def quarantine_show(
        request: Request, entry_id: Annotated[str, _ENTRY], token: TokenInfo = look
    ) -> dict[str, Any]:
        """One instance (waiting or decided) with its reports and every arrival's audit record id."""
        try:
            entry = await run_in_threadpool(_review(request).desk.get, entry_id)
        except NoSuchEntry as exc:
            raise HTTPException(404, detail=exc.diagnostics()) from None
        reports = {k: entry.field(k) for k in ("signature", "watermark", "detector")}
        return {**entry.summary(), "arrival_records": entry.arrivals, **reports}

    async def decide(request: Request, token: TokenInfo, entry_id: str, decision: Decision, comment: str) -> Any:
        desk = _review(request).desk
        reviewer = Reviewer(label=f"token {token.id} ({token.name})", channel=Channel.API, token_id=token.id)
        try:
            outcome = await run_in_threadpool(
                lambda: desk.decide(entry_id, decision, reviewer=reviewer, comment=comment)
            )
        except NoSuchEntry as exc:
            raise HTTPException(404, detail=exc.diagnostics()) from None
        except AlreadyDecided as exc:
            raise HTTPException(409, detail=exc.diagnostics()) from None
        except InputError as exc:
            raise HTTPException(400, detail=exc.diagnostics()) from None
        except ReviewError as exc:
            raise HTTPException(503, detail=exc.diagnostics()) from None
        return {"id": outcome.entry_id, "decision": outcome.decision.value, "audit_id": outcome.audit_id,
                "destination": outcome.destination}  # fmt: skip

    decided: dict[int | str, dict[str, Any]] = {
        **not_found,
        400: {"description": "No comment."},
        409: {"description": "Already released or rejected (by whom is in the detail)."},
    }

    @router.post("/{entry_id}/release", response_model=DecisionResponse, responses=decided)
    async def quarantine_release(
        request: Request, entry_id: Annotated[str, _ENTRY], body: DecisionRequest, token: TokenInfo = act
    ) -> Any:
        """Send the instance on to where it was going (the gateway's forward queue, Orthanc, the STOW-RS store)."""
        return await decide(request, token, entry_id, Decision.RELEASE, body.comment)

    @router.post("/{entry_id}/reject", response_model=DecisionResponse, responses=decided)
    async def quarantine_reject(
        request: Request, entry_id: Annotated[str, _ENTRY], body: DecisionRequest, token: TokenInfo = act
    ) -> Any:
        """Move the instance to the rejected store."""
        return await decide(request, token, entry_id, Decision.REJECT, body.comment)

    return router
