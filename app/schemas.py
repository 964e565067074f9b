"""Request and response bodies of the /v1 API (the OpenAPI schema at /docs is built from these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexer.refine import TakenRange

Target = Literal["images", "texts"]
# Catalog ids are SQLite INTEGERs (signed 64-bit) handed out from 1.
ItemId = Annotated[int, Field(ge=0, le=2**63 - 1, description="An item id of the index.")]


class SearchFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path_prefix: str | None = Field(
        None, max_length=4096, description="Only images in this folder (or below), or this file."
    )
    taken_from: str | None = Field(
        None, max_length=32, description="Only images taken on or after this (EXIF, YYYY-MM-DD)."
    )
    taken_to: str | None = Field(
        None, max_length=32, description="Only images taken on or before this (EXIF, YYYY-MM-DD)."
    )


class SearchBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, ge=1, strict=True, description="How many hits; at most the server's max_k.")
    target: Target = Field("images", description="Search the images or the texts of the index.")
    filter: SearchFilter | None = None
    min_score: float | None = Field(
        None, ge=-1, le=1, description="Drop hits scoring below this cosine similarity."
    )
    min_relative: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Drop hits scoring below this fraction of the best hit's score.",
    )

    @property
    def path_prefix(self) -> str | None:
        return self.filter.path_prefix if self.filter else None

    @property
    def taken(self) -> TakenRange | None:
        """The date filter (a malformed date raises the library's QueryError: 422)."""
        f = self.filter
        return TakenRange.parse(f.taken_from, f.taken_to) if f else None


class TextSearchRequest(SearchBase):
    query: str = Field(..., description="What to look for, in words.")


class ImageSearchRequest(SearchBase):
    image: str | None = Field(None, description="The query image as base64 (a data: URL is fine).")
    image_id: ItemId | None = Field(None, description="Search by an image already in the index.")


class VectorSearchRequest(SearchBase):
    vector: list[float] = Field(..., description="A query embedding of the index's dimension.")


class Hit(BaseModel):
    id: int
    score: float = Field(
        ...,
        description="Cosine similarity to the query. Sentence queries to images are ordered with "
        "the model's hubness correction, so a hit may score above the one before it.",
    )
    kind: Literal["image", "text"]
    path: str | None = None
    text: str | None = None
    url: str | None = Field(None, description="The original image, served by id.")
    thumbnail_url: str | None = None
    width: int | None = None
    height: int | None = None
    duplicates: list[str] = Field(
        default_factory=list, description="Paths of byte-identical copies folded into this hit."
    )
    taken: str | None = Field(None, description="EXIF date taken (ISO 8601, camera's clock).")
    camera: str | None = Field(None, description="EXIF camera make and model.")


class SearchResponse(BaseModel):
    hits: list[Hit]
    target: Target
    took_ms: float


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(..., min_length=1)


class ImageBatch(BaseModel):
    """Images as base64 strings (JSON form of the embed and add endpoints)."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(..., min_length=1, description="Images as base64.")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


class AddImagesResponse(BaseModel):
    added: list[Hit]
    report: dict[str, Any]


class DeleteResponse(BaseModel):
    id: int
    removed: bool


class IndexInfo(BaseModel):
    stats: dict[str, Any]
    provenance: dict[str, Any]
    directory: str
    service: dict[str, Any]


class Health(BaseModel):
    status: str
    detail: str | None = None


class ErrorBody(BaseModel):
    detail: str
    code: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "A body that cannot be parsed (e.g. malformed multipart)"),
        (401, "A key is needed and none was sent"),
        (403, "The key is wrong, or writes are off"),
        (404, "No such id"),
        (409, "Another writer holds the index, or it is read-only"),
        (413, "Body, upload, image or the request's pixels too large"),
        (415, "Not an image"),
        (422, "Invalid request"),
        (429, "Too many images waiting to be decoded; retry"),
        (503, "The index is not loaded yet, or is damaged"),
        (507, "The disk holding the index is full"),
    )
}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Register the bodies that routes parse by hand (JSON or multipart on one path), which
    FastAPI cannot see, so the ``$ref`` in those routes' ``openapi_extra`` resolve."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in (ImageSearchRequest, ImageBatch):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return openapi


def state_limits(openapi: dict[str, Any], settings: Any, dim: int | None) -> dict[str, Any]:
    """Write the server's configured limits into the body schemas (k, query length, batch
    sizes, the vector's dimension once the index is loaded), so clients and fuzzers see what
    the server accepts rather than a bare ``integer``; and the errors any route may answer
    (body caps, busy decoders, a damaged index) into every operation."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in ERROR_RESPONSES.items():
                responses.setdefault(
                    str(status),
                    {
                        "description": response["description"],
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorBody"}
                            }
                        },
                    },
                )
    schemas = openapi.get("components", {}).get("schemas", {})
    text = {"maxLength": settings.max_query_chars, "pattern": r"\S"}
    for schema in schemas.values():
        props = schema.get("properties", {})
        if "k" in props:
            props["k"]["maximum"] = settings.max_k
        if "query" in props:
            props["query"].update(text)
        if "texts" in props:
            props["texts"].update(maxItems=settings.max_batch_items)
            props["texts"]["items"].update(text)
        if "images" in props:
            props["images"]["maxItems"] = settings.max_batch_items
        if "vector" in props and dim is not None:
            props["vector"].update(minItems=dim, maxItems=dim)
    return openapi
