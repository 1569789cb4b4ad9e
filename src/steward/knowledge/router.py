"""HTTP endpoints of the knowledge domain: documents (upload, list, read, share, delete)
and search. Uploads are JSON text or a multipart file; ingestion runs in the worker."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile

from steward.accounts.authentication import Principal
from steward.accounts.deps import Admin, CurrentUserId, requires
from steward.accounts.limits import RateLimited
from steward.accounts.scopes import Role
from steward.knowledge import service
from steward.knowledge.extraction import media_type_of
from steward.knowledge.schemas import (
    DocumentCreate,
    DocumentRead,
    SearchMode,
    SearchResults,
    Title,
)
from steward.platform.api import API_V1
from steward.platform.deps import AppSettings, Session, resources_of
from steward.platform.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from steward.platform.inputs import Text
from steward.platform.pagination import Cursor, Limit, Page

router = APIRouter(prefix=f"{API_V1}/knowledge", tags=["knowledge"], dependencies=[RateLimited])

KnowledgeReader = Annotated[Principal, Depends(requires("knowledge:read"))]
KnowledgeWriter = Annotated[Principal, Depends(requires("knowledge:write"))]
DocumentId = Annotated[uuid.UUID, Path(description="the document's id")]

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid credentials"},
    403: {"description": "missing scope"},
}
_ONE: dict[int | str, dict[str, Any]] = {**_AUTH, 404: {"description": "no such document"}}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DocumentCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "text, Markdown, HTML or PDF"},
                        "title": {"type": "string", "maxLength": 200,
                                  "description": "defaults to the file name"},
                    },
                }
            },
        },
    }
}  # fmt: skip


async def _knowledge(request: Request) -> service.Knowledge:
    return resources_of(request).get(service.Knowledge)


KnowledgePart = Annotated[service.Knowledge, Depends(_knowledge)]


class _Upload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    media_type: str
    content: bytes
    shared: bool = False


def _invalid(exc: ValidationError) -> RequestValidationError:
    """The body's validation errors as FastAPI reports them (the same 422 problem)."""
    errors = exc.errors(include_url=False, include_context=False)
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"documents may be at most {limit} bytes")
    received = bytearray()
    async for piece in request.stream():
        received += piece
        if len(received) > limit + 64 * 1024:  # the envelope around the document
            raise PayloadTooLarge(f"documents may be at most {limit} bytes")
    return bytes(received)


async def _read_upload(request: Request, limit: int) -> _Upload:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            parsed = DocumentCreate.model_validate_json(await _body(request, limit))
        except ValidationError as exc:
            raise _invalid(exc) from None
        content = parsed.text.encode()
        if len(content) > limit:
            raise PayloadTooLarge(f"documents may be at most {limit} bytes")
        return _Upload(title=parsed.title, media_type=parsed.media_type, content=content,
                       shared=parsed.shared)  # fmt: skip
    if kind != "multipart/form-data":
        raise UnsupportedMediaType("send JSON {title, text} or a multipart/form-data file")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"documents may be at most {limit} bytes")
    # A malformed body is Starlette's HTTPException(400), answered as a problem.
    form = await request.form(max_files=1, max_fields=4)
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise BadRequest("the multipart body needs a `file` part")
    media_type = media_type_of(file.content_type, file.filename)
    if media_type is None:
        raise UnsupportedMediaType(
            "supported documents: text/plain, text/markdown, text/html, application/pdf"
        )
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLarge(f"documents may be at most {limit} bytes")
    title = form.get("title")
    title = title if isinstance(title, str) and title.strip() else (file.filename or "untitled")
    try:
        return _Upload(title=title.strip()[:200], media_type=media_type, content=content)
    except ValidationError as exc:
        raise _invalid(exc) from None


@router.post(
    "/documents",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Upload a document to be ingested; the same content again returns the same "
    "document (scope knowledge:write; `shared` for admins)",
    responses={**_AUTH, 413: {"description": "too large"},
               415: {"description": "unsupported document type"}},
    openapi_extra=_UPLOAD_BODY,
)  # fmt: skip
async def upload_document(
    principal: KnowledgeWriter,
    owner_id: CurrentUserId,
    session: Session,
    settings: AppSettings,
    request: Request,
    response: Response,
) -> DocumentRead:
    upload = await _read_upload(request, settings.knowledge_max_bytes)
    if upload.shared and principal.role != Role.ADMIN:
        raise Forbidden("only administrators share documents with everyone")
    created = await service.create(session, owner_id=owner_id, title=upload.title,
                                   media_type=upload.media_type, content=upload.content,
                                   shared=upload.shared)  # fmt: skip
    response.headers["Location"] = request.url_for(
        "read_document", document_id=created.document.id
    ).path
    if not created.created:
        response.headers["Idempotent-Replayed"] = "true"
    document = DocumentRead.model_validate(created.document)
    document.job_id = created.job_id
    return document


@router.get("/documents", summary="List own documents, newest first (scope knowledge:read)",
            responses=_AUTH)  # fmt: skip
async def list_documents(
    _: KnowledgeReader, owner_id: CurrentUserId, session: Session, limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[DocumentRead]:  # fmt: skip
    rows, next_cursor = await service.list_documents(session, owner_id=owner_id, limit=limit,
                                                     cursor=cursor)  # fmt: skip
    return Page(items=[DocumentRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/documents/{document_id}", summary="A document: status, chunk count, error "
            "(own or shared; scope knowledge:read)", responses=_ONE)  # fmt: skip
async def read_document(
    document_id: DocumentId, _: KnowledgeReader, owner_id: CurrentUserId, session: Session
) -> DocumentRead:
    document = await service.get(session, owner_id=owner_id, document_id=document_id)
    return DocumentRead.model_validate(document)


class ShareUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shared: bool


@router.patch("/documents/{document_id}", summary="Share an own document with every user, "
              "or stop sharing it (admin)", responses=_ONE)  # fmt: skip
async def share_document(
    document_id: DocumentId, change: ShareUpdate, admin: Admin, session: Session
) -> DocumentRead:
    assert admin.user_id is not None or admin.kind == "service"
    owner_id = admin.user_id
    if owner_id is None:
        raise Forbidden("this endpoint acts for a user; the service key has no user")
    document = await service.get(session, owner_id=owner_id, document_id=document_id, write=True)
    return DocumentRead.model_validate(await service.set_shared(session, document, change.shared))


@router.delete("/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete an own document and its chunks (scope knowledge:write)",
               responses=_ONE)  # fmt: skip
async def delete_document(
    document_id: DocumentId, _: KnowledgeWriter, owner_id: CurrentUserId, session: Session
) -> Response:
    document = await service.get(session, owner_id=owner_id, document_id=document_id, write=True)
    await service.remove(session, document)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_SEARCH_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    422: {"description": "invalid, or mode=vector where the database lacks pgvector"},
    503: {"description": "the embedder is unavailable (mode=vector)"},
}


@router.get("/search", summary="The chunks of own and shared documents that best answer `q` "
            "(scope knowledge:read)", responses=_SEARCH_ERRORS)  # fmt: skip
async def search(
    _: KnowledgeReader,
    owner_id: CurrentUserId,
    session: Session,
    knowledge: KnowledgePart,
    q: Annotated[Text, Query(min_length=1, max_length=1000, description="the question")],
    k: Annotated[int, Query(ge=1, le=50, description="how many chunks")] = 5,
    mode: Annotated[SearchMode, Query(description="ranking")] = SearchMode.HYBRID,
) -> SearchResults:
    hits, used = await service.search(session, knowledge, owner_id=owner_id, q=q, k=k, mode=mode)
    return SearchResults(items=hits, mode=used)
