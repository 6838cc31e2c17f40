"""Request bodies of the HTTP API: one DICOM file, or several in a multipart body (``related`` or ``form-data``).

The envelope is parsed strictly: a body that is not what its Content-Type says (no boundary, no closing
boundary, a part with bad headers) is a :class:`BodyError`, answered 400 (or 415 for a media type the endpoint
does not take) before any file is checked. The files inside are *not* judged here: an unreadable file is the
checker's business and gets its own UNREADABLE verdict and audit record.
"""

from __future__ import annotations

import dataclasses
from email.message import Message

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

__all__ = ["BodyError", "MediaType", "Part", "parse_media_type", "split_body"]

#: Parts in one request; a bound on the work one request may ask for, besides the body size limit.
MAX_PARTS = 1000
DICOM = "application/dicom"


class BodyError(Exception):
    """The request body cannot be taken; ``status`` is the HTTP status to answer with (400 or 415)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class MediaType:
    """A parsed Content-Type: ``type/subtype`` in lowercase, and its parameters (names lowercased)."""

    essence: str
    params: dict[str, str]


def parse_media_type(value: str | None) -> MediaType:
    """Parse a Content-Type header value (quoted parameters included)."""
    if not value or not value.strip():
        raise BodyError("the request has no Content-Type", status=415)
    message = Message()
    message["content-type"] = value
    essence = message.get_content_type().lower()
    # email falls back to text/plain for a value it cannot parse; only trust it when the header says so.
    if essence != value.split(";", 1)[0].strip().lower():
        raise BodyError(f"cannot parse the Content-Type {value[:100]!r}", status=415)
    params = {k.lower(): str(v) for k, v in message.get_params(failobj=[], header="content-type")[1:]}
    return MediaType(essence=essence, params=params)


@dataclasses.dataclass(frozen=True)
class Part:
    """One file of a request: its bytes, its Content-Type (lowercase essence, may be empty) and a label."""

    data: bytes = dataclasses.field(repr=False)
    content_type: str
    #: The form field's file name (multipart/form-data), sanitised for the audit log; else ``part-N``.
    label: str
    #: The file name as sent (not sanitised: to match, never to build a path or log); None when there was none.
    filename: str | None = None


def _label(disposition: str | None, index: int) -> str:
    if disposition:
        message = Message()
        message["content-disposition"] = disposition
        name = message.get_param("filename", header="content-disposition")
        if isinstance(name, str) and name:
            clean = "".join(c for c in name if c.isprintable() and c not in "/\\")[:120].strip()
            if clean:
                return clean
    return f"part-{index}"


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    message = Message()
    message["content-disposition"] = disposition
    name = message.get_param("filename", header="content-disposition")
    return name if isinstance(name, str) and name else None


def split_body(body: bytes, media: MediaType) -> list[Part]:
    """The files of a multipart body; raises :class:`BodyError` when the envelope is malformed."""
    boundary = media.params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise BodyError("a multipart body needs a boundary parameter of 1 to 70 characters")
    parts: list[Part] = []
    state: dict[str, object] = {"ended": False}
    chunks: list[bytes] = []
    headers: dict[str, str] = {}
    field: list[bytes] = []
    value: list[bytes] = []

    def on_part_begin() -> None:
        chunks.clear()
        headers.clear()
        if len(parts) >= MAX_PARTS:
            raise BodyError(f"more than {MAX_PARTS} parts in one request", status=413)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.append(data[start:end])

    def on_header_end() -> None:
        name = b"".join(field).decode("latin-1").strip().lower()
        headers[name] = b"".join(value).decode("latin-1").strip()
        field.clear()
        value.clear()

    def on_part_end() -> None:
        content_type = ""
        if headers.get("content-type"):
            content_type = parse_media_type(headers["content-type"]).essence
        parts.append(
            Part(
                data=b"".join(chunks),
                content_type=content_type,
                label=_label(headers.get("content-disposition"), len(parts) + 1),
                filename=_filename(headers.get("content-disposition")),
            )
        )

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_end": on_end,
        },
        max_header_count=16,
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BodyError(f"malformed multipart body: {str(exc)[:200]}") from None
    if not state["ended"]:
        raise BodyError("malformed multipart body: no closing boundary (the body is cut short?)")
    if not parts:
        raise BodyError("the multipart body has no parts")
    return parts
