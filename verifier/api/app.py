"""The FastAPI application of ``medverify serve``.

Every route but ``/v1/health`` and ``/openapi.json`` needs an API token (``Authorization: Bearer mv_...``): none
or a bad one is 401, one of the wrong scope 403. Tokens are checked before the body is read. Bodies larger than
the configured limit are refused with 413 (by Content-Length before reading, else while reading); a body that is
not what its Content-Type says is 400, a media type the route does not take is 415.

Every file checked leaves exactly one audit record (channel ``api``, the token's id in ``api_token_id``, the peer
address), written before the answer goes out; when the record cannot be written the file is not stored and the
request fails (fail closed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from verifier.api.metrics import render_metrics
from verifier.api.multipart import DICOM, BodyError, MediaType, Part, parse_media_type, split_body
from verifier.api.review import quarantine_router
from verifier.api.storage import InstanceStore
from verifier.api.stow import DICOM_JSON, StoreOutcome, store_decision, stow_response
from verifier.audit import AuditLog, Channel, TrustedCertificates
from verifier.audit.tokens import AuthStatus, TokenInfo, TokenScope, TokenStore
from verifier.errors import AuditError, InputError
from verifier.intake.decide import Intake, Peer
from verifier.intake.queue import Forwarder
from verifier.review.config import ReviewConfig
from verifier.review.web import install as install_review_pages

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ApiConfig", "create_app"]

#: Default limit of one request body (all files of a multipart request together).
DEFAULT_MAX_BODY_BYTES = 256 * 1024**2
#: After the limit is passed, up to this much more is read and dropped so the client can read the 413.
_DRAIN_BYTES = 16 * 1024**2
_MAX_RECORD_ID = 2**63 - 1
#: A client's ``X-Request-ID`` is recorded (details.intake.request_id) when it has this form, else ignored.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """What the application serves with: the checks and audit log, the token store, the STOW-RS backend."""

    intake: Intake
    tokens: TokenStore
    store: InstanceStore
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Requests whose bodies are read and checked at once; more wait their turn. Bounds memory to about
    #: ``max_concurrent * max_body_bytes`` and keeps the CPU-bound checks from starving each other.
    max_concurrent: int = 4
    #: Forwards what STOW-RS stores to a PACS (C-STORE, durable spool); None keeps it in ``store`` only.
    forward: Forwarder | None = None
    #: The quarantine review (pages under /ui, /v1/quarantine); None: neither is served.
    review: ReviewConfig | None = None
    #: Told of every instance STOW-RS quarantines (the quarantine webhook).
    on_quarantine: Callable[[dict[str, Any]], None] | None = None
    #: Who may sign the audit checkpoints GET /v1/audit/verify checks; None: every checkpoint counts as untrusted.
    audit_trust: TrustedCertificates | None = None

    @property
    def audit_log(self) -> AuditLog:
        if self.intake.audit_log is None:
            raise AuditError("the API needs an audit log")
        return self.intake.audit_log


# -- response models (they give the OpenAPI schema its shapes) ------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str = Field(description="Why the request was refused.")


class PeerModel(BaseModel):
    ae_title: str | None = None
    address: str | None = None
    channel: str


class FileVerdict(BaseModel):
    """One checked file: the verdict and action of the site policy, the reasons, the reports, the audit id."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(description="The upload's label in the audit log: api:<peer>/<file name or part-N>.")
    verdict: str = Field(description="AUTHENTIC, DECLARED_SYNTHETIC, TAMPERED, NO_EVIDENCE, UNREADABLE, ...")
    action: str = Field(description="accept, flag, quarantine or reject.")
    reasons: list[str]
    status: str = Field(description="The provenance check's own status (signature status, or UNREADABLE).")
    sha256: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    signature: dict[str, Any] | None = None
    watermark: dict[str, Any] | None = None
    policy_version: str | None = None
    not_run: dict[str, str] = Field(
        default_factory=dict, description="The checks asked for that could not run here (check: why)."
    )
    error: str | None = None
    audit_id: int | None = Field(default=None, description="Id of the audit record (GET /v1/audit/{id}).")
    peer: PeerModel | None = None


class VerifyResponse(BaseModel):
    results: list[FileVerdict] = Field(description="One result per file, in request order.")


class AuditRecordModel(BaseModel):
    """A stored audit record (see ``medverify audit show``)."""

    model_config = ConfigDict(extra="allow")

    id: int
    leaf_index: int
    leaf_hash: str
    event: str
    channel: str
    when: str
    path: str | None = None
    file_sha256: str | None = None
    api_token_id: str | None = None
    verdict: str | None = None
    action: str | None = None


class AuditPageModel(BaseModel):
    """One page of the records a search matched, newest first."""

    records: list[AuditRecordModel]
    total: int = Field(description="How many records match the filters in all.")
    offset: int = Field(description="How many matching records are newer than this page's first.")
    limit: int
    next_cursor: str | None = Field(
        default=None, description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


class AuditVerificationModel(BaseModel):
    """The result of recomputing the whole log (see ``medverify audit verify``)."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(description="valid, tampered, bad-checkpoint or untrusted-checkpoint.")
    records_checked: int
    checkpoints_checked: int
    tree_size: int
    root_hash: str
    first_bad_record_id: int | None = None
    bad_checkpoint_size: int | None = None
    reason: str
    unanchored_records: int


class HealthResponse(BaseModel):
    status: str
    version: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No API token, or an invalid, expired or revoked one."},
    403: {"model": ErrorResponse, "description": "The token's scope does not allow this route."},
}
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not what its Content-Type says (malformed multipart)."},
    413: {"model": ErrorResponse, "description": "The body is larger than the server's limit."},
    415: {"model": ErrorResponse, "description": "A media type this route does not take."},
    503: {
        "model": ErrorResponse,
        "description": "The audit database is unavailable: the request fails rather than answer without a record.",
    },
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_VERIFY_BODY = {
    "requestBody": {
        "required": True,
        "description": "One DICOM Part 10 file (application/dicom), or several in a multipart body.",
        "content": {
            DICOM: _BINARY,
            "multipart/related": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    }
}
_CLAIMS_BODY = {
    "requestBody": {
        "required": True,
        "description": "A FHIR R4 claim bundle (one part of type application/fhir+json) and the images its claims' "
        "supportingInfo.valueAttachment.url name (one part a file, its file name the URL or its last segment).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["bundle"],
                    "properties": {
                        "bundle": {
                            "type": "object",
                            "description": "A FHIR R4 Bundle (JSON) of Claim resources with the Patient, ImagingStudy, "
                            "Procedure and Condition resources they refer to; no Claim, no claims to audit.",
                            "required": ["resourceType", "type"],
                            "properties": {
                                "resourceType": {"const": "Bundle"},
                                "type": {"enum": ["collection", "batch", "transaction", "searchset"]},
                                "entry": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                },
                "encoding": {"bundle": {"contentType": "application/fhir+json"}},
            },
            "multipart/related": _BINARY,
        },
    }
}
_CLAIMS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audit: medverify-claims-audit/v1 JSON (format=json), or a FHIR R4 Bundle with a "
        "DetectedIssue a finding and a Provenance an image (format=fhir).",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}},
            "application/fhir+json": {"schema": {"type": "object", "additionalProperties": True}},
        },
    },
    422: {
        "description": "Not a claim audit: no bundle or two, a bundle that is not valid FHIR R4 or whose references "
        "do not resolve, an attachment not sent, a file no claim names (detail: why, a string); or a query parameter "
        "out of range (detail: FastAPI's list of validation errors). Nothing was checked or recorded.",
        "content": {"application/json": {"schema": {"type": "object", "required": ["detail"],
                                                    "properties": {"detail": {"description": "Why."}}}}},
    },
}
_STOW_BODY = {
    "requestBody": {
        "required": True,
        "description": 'DICOM PS3.18 STOW-RS: multipart/related; type="application/dicom", one instance per part.',
        "content": {"multipart/related": _BINARY},
    }
}
_STOW_RESPONSE_SCHEMA = {
    "description": "PS3.18 Store Instances Response Module (DICOM JSON): ReferencedSOPSequence (00081199) and "
    "FailedSOPSequence (00081198) with FailureReason (00081197).",
    "content": {DICOM_JSON: {"schema": {"type": "object", "additionalProperties": True}}},
}


# -- plumbing -------------------------------------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="An API token from `medverify tokens create --scope verify|audit-read|admin`.",
)


def _config(request: Request) -> ApiConfig:
    config: ApiConfig | None = request.app.state.config
    if config is None:
        raise HTTPException(503, detail="this application was built without a configuration (schema only)")
    return config


def _require(scope: TokenScope, *, also: tuple[TokenScope, ...] = ()) -> Callable[..., Awaitable[TokenInfo]]:
    """A dependency that admits a valid token whose scope allows ``scope`` (admin allows all) or is in ``also``."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> TokenInfo:
        config = _config(request)
        presented = credentials.credentials if credentials is not None else None
        try:
            result = await run_in_threadpool(config.tokens.authenticate, presented)
        except AuditError as exc:
            raise HTTPException(503, detail=f"cannot check the token: {exc.diagnostics()}") from None
        if result.status is not AuthStatus.OK or result.token is None:
            why = {AuthStatus.EXPIRED: "the API token has expired", AuthStatus.REVOKED: "the API token is revoked"}
            detail = (
                "a valid API token is required (Authorization: Bearer mv_...)"
                if presented is None
                else (why.get(result.status, "the API token is not valid"))
            )
            challenge = "Bearer" if presented is None else 'Bearer error="invalid_token"'
            raise HTTPException(401, detail=detail, headers={"WWW-Authenticate": challenge})
        if not (result.token.scope.allows(scope) or result.token.scope in also):
            raise HTTPException(
                403, detail=f"the API token has scope {result.token.scope.value}; this route needs {scope.value}"
            )
        return result.token

    return check


#: Route parameters that admit a token of the named scope (module level: FastAPI resolves them by name).
VerifyToken = Annotated[TokenInfo, Depends(_require(TokenScope.VERIFY))]
AuditReadToken = Annotated[TokenInfo, Depends(_require(TokenScope.AUDIT_READ))]
#: Who may look at the quarantine (review, audit-read, admin) and who may release or reject (review, admin).
_LOOK = Depends(_require(TokenScope.REVIEW, also=(TokenScope.AUDIT_READ,)))
_ACT = Depends(_require(TokenScope.REVIEW))


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) before or while reading it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, detail="the Content-Length header is not a number") from None
        if size > limit:
            raise HTTPException(413, detail=f"the body of {size} bytes is over the limit of {limit} bytes")
    body = bytearray()
    over = 0
    async for chunk in request.stream():
        if over:
            over += len(chunk)
            if over > _DRAIN_BYTES:
                break
            continue
        body += chunk
        if len(body) > limit:
            over = len(body) - limit
    if over:
        raise HTTPException(413, detail=f"the body is over the limit of {limit} bytes")
    if not body:
        raise HTTPException(400, detail="the request body is empty")
    return bytes(body)


def _peer(request: Request, token: TokenInfo) -> Peer:
    address = f"{request.client.host}:{request.client.port}" if request.client is not None else None
    return Peer(channel=Channel.API, address=address, token_id=token.id)


def _request_id(request: Request) -> dict[str, str]:
    """``{"request_id": ...}`` for the audit record when the client sent a well-formed X-Request-ID."""
    value = request.headers.get("x-request-id", "")
    return {"request_id": value} if _REQUEST_ID.fullmatch(value) else {}


def _label(peer: Peer, part: Part) -> str:
    return f"{peer.describe()}/{part.label}"


def _verify_parts(config: ApiConfig, parts: list[Part], peer: Peer, tags: dict[str, str]) -> list[dict[str, Any]]:
    """Check each part and write its one audit record (event ``verify``) before answering."""
    out = []
    for part in parts:
        decision = config.intake.check(part.data, peer, name=_label(peer, part))
        decision = config.intake.record(decision, event="verify", endpoint="/v1/verify", **tags)
        out.append(decision.to_dict())
    return out


def _stow_parts(config: ApiConfig, parts: list[Part], peer: Peer, tags: dict[str, str]) -> tuple[int, dict[str, Any]]:
    outcomes: list[StoreOutcome] = []
    for part in parts:
        decision = config.intake.check(part.data, peer, name=_label(peer, part))
        outcomes.append(store_decision(config.intake, config.store, decision, forward=config.forward,
                                       on_quarantine=config.on_quarantine, **tags))  # fmt: skip
    if not any(o.stored for o in outcomes) and any(o.unrecorded for o in outcomes):
        # Nothing kept and the audit log is what failed: the service is unavailable, not the instances refused.
        raise HTTPException(503, detail="audit database unavailable: no instance was stored (retry later)")
    return stow_response(outcomes)


def create_app(config: ApiConfig | None = None) -> FastAPI:
    """The application; without ``config`` it serves nothing but its schema (used to write openapi.json)."""
    app = FastAPI(
        title="medverify",
        version=importlib.metadata.version("medverify"),
        summary="Tell whether medical DICOM images are genuine: signatures, watermarks, detectors, audit log.",
        docs_url=None,  # the documentation pages load scripts from a CDN; the schema is enough
        redoc_url=None,
    )
    app.state.config = config
    app.state.slots = asyncio.Semaphore(config.max_concurrent if config is not None else 1)

    @app.exception_handler(AuditError)
    async def _audit_unavailable(_request: Request, exc: AuditError) -> JSONResponse:
        return JSONResponse({"detail": f"audit database: {exc.diagnostics()}"}, status_code=503)

    @app.get("/v1/health", response_model=HealthResponse, tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness: the server answers. Needs no token."""
        return {"status": "ok", "version": app.version}

    @app.post(
        "/v1/verify",
        response_model=VerifyResponse,
        responses={**_ERRORS, **_BODY_ERRORS},
        openapi_extra=_VERIFY_BODY,
        tags=["verify"],
    )
    async def verify(request: Request, token: VerifyToken) -> JSONResponse:
        """Check one DICOM file or several (multipart); one verdict and one audit record per file.

        A file that cannot be read still gets a result (verdict UNREADABLE or MALFORMED) and a record. An
        ``X-Request-ID`` header (1-64 of ``A-Za-z0-9._:-``) is kept in each record, so a client that lost an
        answer can tell whether its request was recorded before sending it again.
        """
        config = _config(request)
        media = _media(request)
        if media.essence not in (DICOM, "multipart/related", "multipart/form-data"):
            raise HTTPException(415, detail="send application/dicom, multipart/related or multipart/form-data")
        async with _slots(request):
            body = await _read_body(request, config.max_body_bytes)
            if media.essence == DICOM:
                parts = [Part(data=body, content_type=DICOM, label="upload")]
            else:
                parts = _split(body, media)
            del body
            results = await run_in_threadpool(_verify_parts, config, parts, _peer(request, token), _request_id(request))
        return JSONResponse({"results": results})

    @app.post(
        "/v1/claims/audit",
        response_class=Response,
        responses={**_ERRORS, **_BODY_ERRORS, **_CLAIMS_RESPONSES},
        openapi_extra=_CLAIMS_BODY,
        tags=["claims"],
    )
    async def claims_audit(
        request: Request,
        token: VerifyToken,
        output: Annotated[
            Literal["json", "fhir"], Query(alias="format", description="json (the audit) or fhir (a FHIR Bundle).")
        ] = "json",
    ) -> Response:
        """Audit the claims of a FHIR bundle with their images, as ``medverify claims audit --fhir`` does: each
        image checked (one audit record each, one summary record a claim), reuse, header rules and the FHIR
        cross-checks. A bad bundle is refused (422) before anything is checked or recorded.
        """
        from verifier.api.claims import FHIR_JSON, audit_claim_parts

        config = _config(request)
        media = _media(request)
        if media.essence not in ("multipart/related", "multipart/form-data"):
            raise HTTPException(415, detail="send multipart/form-data or multipart/related: a bundle and its images")
        peer = _peer(request, token).describe()
        async with _slots(request):
            body = await _read_body(request, config.max_body_bytes)
            parts = _split(body, media)
            del body
            try:
                text = await run_in_threadpool(audit_claim_parts, config.intake.checker, config.audit_log, parts,
                                               output=output, peer=peer)  # fmt: skip
            except InputError as exc:
                raise HTTPException(422, detail=str(exc)) from None
        return Response(text, media_type=FHIR_JSON if output == "fhir" else "application/json")

    @app.get(
        "/v1/audit",
        response_model=AuditPageModel,
        responses={
            **_ERRORS,
            400: {"model": ErrorResponse, "description": "A filter value that is none (the valid ones are listed)."},
        },
        tags=["audit"],
    )
    async def audit_search(
        request: Request,
        token: AuditReadToken,
        verdict: Annotated[
            list[str] | None, Query(description="Only these verdicts (repeatable; any case), e.g. TAMPERED.")
        ] = None,
        action: Annotated[list[str] | None, Query(description="Only these actions: accept, flag, ...")] = None,
        channel: Annotated[
            list[str] | None, Query(description="Only these channels: cli, scan, intake, api, ...")
        ] = None,
        since: Annotated[str | None, Query(description="At or after this time (ISO 8601; UTC if no zone).")] = None,
        until: Annotated[str | None, Query(description="Before this time.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Records per page.")] = 100,
        cursor: Annotated[str | None, Query(max_length=32, description="next_cursor of the previous page.")] = None,
    ) -> JSONResponse:
        """Search the audit log, newest first, a page at a time (the same search as `medverify audit list`)."""
        from verifier.audit.search import (
            AuditQuery,
            normalise_actions,
            normalise_channels,
            normalise_verdicts,
            search,
        )

        log = _config(request).audit_log

        def run() -> dict[str, Any]:
            query = AuditQuery(
                verdicts=normalise_verdicts(log, verdict or (), "verdict"),
                actions=normalise_actions(log, action or (), "action"),
                channels=normalise_channels(channel or (), "channel"),
                since=_query_time(since, "since"),
                until=_query_time(until, "until"),
            )
            page = search(log, query, limit=limit, cursor=cursor)
            return {
                "records": [r.to_json_dict() for r in page.records],
                "total": page.total,
                "offset": page.offset,
                "limit": limit,
                "next_cursor": page.next_cursor,
            }

        try:
            return JSONResponse(await run_in_threadpool(run))
        except InputError as exc:
            raise HTTPException(400, detail=str(exc)) from None

    @app.get(
        "/v1/audit/verify",
        response_model=AuditVerificationModel,
        responses=_ERRORS,
        tags=["audit"],
    )
    async def audit_verify(request: Request, token: AuditReadToken) -> JSONResponse:
        """Recompute the whole log and check every signed checkpoint, as `medverify audit verify` does: an edited,
        deleted, inserted or reordered record gives status `tampered` and names the first bad one. Takes time
        proportional to the log's size."""
        config = _config(request)
        trusted: TrustedCertificates = config.audit_trust if config.audit_trust is not None else ()
        result = await run_in_threadpool(config.audit_log.verify, trusted=trusted)
        return JSONResponse(result.to_json_dict())

    @app.get(
        "/v1/audit/{record_id}",
        response_model=AuditRecordModel,
        responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No such record."}},
        tags=["audit"],
    )
    async def audit_record(
        request: Request,
        record_id: Annotated[int, Path(ge=1, le=_MAX_RECORD_ID, description="The record id (audit_id).")],
        token: AuditReadToken,
    ) -> JSONResponse:
        """One audit record as stored (not yet checked against the log; `medverify audit verify` does that)."""
        log = _config(request).audit_log
        if record_id > await run_in_threadpool(log.size):
            raise HTTPException(404, detail=f"there is no audit record {record_id}")
        record = await run_in_threadpool(log.get, record_id)
        return JSONResponse(record.to_json_dict())

    @app.post(
        "/dicomweb/studies",
        responses={
            200: {**_STOW_RESPONSE_SCHEMA, "description": "Every instance was stored."},
            202: {**_STOW_RESPONSE_SCHEMA, "description": "Some instances were stored, some refused."},
            409: {**_STOW_RESPONSE_SCHEMA, "description": "No instance was stored (each refused; see FailureReason)."},
            507: {
                **_STOW_RESPONSE_SCHEMA,
                "description": "No instance was stored and the store is out of space (FailureReason A700).",
            },
            **_ERRORS,
            **_BODY_ERRORS,
        },
        response_class=JSONResponse,
        openapi_extra=_STOW_BODY,
        tags=["dicomweb"],
    )
    async def stow(request: Request, token: VerifyToken) -> JSONResponse:
        """STOW-RS Store Instances as an intake: accepted instances are stored, the rest refused.

        Instances the site policy accepts (or flags) are stored under the configured directory, named by their
        SHA-256; quarantined ones are kept aside in the quarantine directory and refused to the sender;
        rejected and unreadable ones are refused. FailureReason: 0110 (processing failure: refused by the
        site policy), C000 (cannot understand: not readable DICOM), A700 (out of resources: could not store
        or record). 503: the audit database is unavailable and nothing was stored. An ``X-Request-ID`` header
        (1-64 of ``A-Za-z0-9._:-``) is kept in each record.
        """
        config = _config(request)
        media = _media(request)
        if media.essence != "multipart/related":
            raise HTTPException(415, detail='STOW-RS takes multipart/related; type="application/dicom"')
        kind = media.params.get("type", DICOM).lower()
        if kind != DICOM:
            raise HTTPException(415, detail=f"only type=application/dicom parts are taken, not {kind[:60]!r}")
        async with _slots(request):
            parts = _split(await _read_body(request, config.max_body_bytes), media)
            status, payload = await run_in_threadpool(
                _stow_parts, config, parts, _peer(request, token), _request_id(request)
            )
        return JSONResponse(payload, status_code=status, media_type=DICOM_JSON)

    @app.get("/metrics", include_in_schema=False)  # Prometheus's text format, not part of the JSON API
    async def metrics(request: Request, token: Annotated[TokenInfo, _LOOK]) -> PlainTextResponse:
        """Prometheus metrics: audit records per event, channel, verdict and action; quarantine and spool depths."""
        body = await run_in_threadpool(render_metrics, _config(request))
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    app.include_router(quarantine_router(_LOOK, _ACT, _ERRORS))
    install_review_pages(app)
    return app


def _query_time(value: str | None, name: str) -> Any:
    import datetime as dt

    if value is None or value == "":
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{name} must be an ISO 8601 date or time, not {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _slots(request: Request) -> asyncio.Semaphore:
    slots: asyncio.Semaphore = request.app.state.slots
    return slots


def _media(request: Request) -> MediaType:
    try:
        return parse_media_type(request.headers.get("content-type"))
    except BodyError as exc:
        raise HTTPException(exc.status, detail=str(exc)) from None


def _split(body: bytes, media: MediaType) -> list[Part]:
    try:
        return split_body(body, media)
    except BodyError as exc:
        raise HTTPException(exc.status, detail=str(exc)) from None
