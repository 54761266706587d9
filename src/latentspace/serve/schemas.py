"""The API's bodies as Pydantic models: what clients send, what the server answers, and what
/openapi.json documents for every route and status.

Embedding responses are written with orjson straight from the float32 arrays
(serve/responses.py `json_response`), not through these models: their routes declare the model
with `response_model=` and return a ready Response, which FastAPI sends as is, so a large float
list is never validated per request. tests/serve/test_openapi.py and test_schema_fuzz.py check
that what is sent matches what is declared.

Response models leave `additionalProperties` open (Pydantic's default): a client must ignore
fields it does not know, which is how fields get added without breaking anyone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from latentspace.inputs import TaskType

ModelState = Literal["loading", "ready", "failed", "dead"]


def _unicode(value: str) -> str:
    # A lone UTF-16 surrogate ("\ud800") is legal in JSON but is not text: code that encodes the
    # string as UTF-8 (the collection filters, in Arrow) would fail on it with a 500. It is
    # refused here, with a 422 that says what is wrong.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode: a lone UTF-16 surrogate at character {e.start}") from None
    return value


UnicodeStr = Annotated[str, AfterValidator(_unicode)]


# -- requests ----------------------------------------------------------------------------------------
class _Lenient(BaseModel):
    # Unknown fields are ignored, not refused: clients written for Nomic's or OpenAI's API send
    # fields (user, max_tokens_per_text, ...) that change nothing here.
    model_config = ConfigDict(extra="ignore")


class TextRequest(_Lenient):
    """Nomic's text embedding request."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": ["a red heart", "a rocket"], "task_type": "search_query"}]}
    )

    texts: list[str] = Field(..., min_length=1, description="the texts to embed, in order")
    model: str | None = Field(
        None, description="a served model's id (GET /v1/models); may be left out when the server serves one model"
    )
    task_type: TaskType = Field("search_document", description="the prefix the model puts before each text")
    dimensionality: int | None = Field(
        None,
        ge=1,
        description="keep the first N dimensions (Matryoshka), then re-normalise; at most the model's dimension",
    )
    long_text_mode: Literal["truncate", "mean"] = Field(
        "truncate", description="texts over the model's token limit: cut, or embed in pieces and average"
    )


# A 2x2 PNG, the image in the examples below (and the one the schema fuzzing sends).
_EXAMPLE_DATA_URL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8ISfHwMDAxMDAwMDAAAANBAEIfXHKZgAAAABJRU5ErkJggg=="
)


class TextPart(BaseModel):
    """A text in `input`, typed (plain strings are texts too)."""

    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str = Field(
        ...,
        min_length=1,
        description="a base64 data URL (data:image/png;base64,...; PNG, JPEG, WebP, GIF or BMP), or an http(s) URL "
        "the server fetches (only with --allow-urls)",
    )


class ImagePart(BaseModel):
    """An image in `input`, as OpenAI's chat API spells one."""

    type: Literal["image_url"]
    image_url: ImageUrl


InputPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
_PART_FORMS = (
    '{"type": "text", "text": "..."} or {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}'
)


def _input_item(index: int, item: Any) -> str | TextPart | ImagePart:
    """One item of `input`, checked here so that a bad one gets a message naming it (Pydantic's
    own, for a union, lists every alternative it tried)."""

    def refuse(reason: str) -> PydanticCustomError:
        return PydanticCustomError("input_item", "input {index}: {reason}", {"index": index, "reason": reason})

    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        what = {bool: "true or false", int: "a number", float: "a number", list: "a list"}.get(type(item), "null")
        raise refuse(f"{what} is not an input; give a string (a text) or a part: {_PART_FORMS}")
    kind = item.get("type")
    if kind == "text":
        if not isinstance(item.get("text"), str):
            raise refuse('a text part needs "text", a string')
        return TextPart(type="text", text=item["text"])
    if kind == "image_url":
        image_url = item.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else None
        if not isinstance(url, str) or not url:
            raise refuse('an image_url part needs "image_url": {"url": "data:image/png;base64,..."}, a non-empty URL')
        return ImagePart(type="image_url", image_url=ImageUrl(url=url))
    if kind is None:
        raise refuse(f'a part needs a "type": {_PART_FORMS}')
    raise refuse(f"unknown part type {str(kind)[:40]!r}; the types are text and image_url")


class OpenAIRequest(_Lenient):
    """OpenAI's embeddings request, with images: texts and images in one list, in one space."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"input": "a red heart"},
                {"input": ["a cat", "a dog"], "encoding_format": "base64"},
                {"input": ["a red square", {"type": "image_url", "image_url": {"url": _EXAMPLE_DATA_URL}}]},
                {"input": [_EXAMPLE_DATA_URL], "modality": "image"},
            ]
        }
    )

    input: str | list[str | InputPart] = Field(
        ...,
        description="what to embed: one text, or a non-empty list of texts and images, answered in order. A plain "
        'string is a text (never fetched or decoded) unless "modality" is "image"; a typed part is what its type '
        f"says: {_PART_FORMS}",
    )
    modality: Literal["text", "image"] = Field(
        "text",
        description='what the plain strings in input are: "image" makes each one an image URL (a base64 data URL, '
        "or an http(s) URL with --allow-urls); typed parts keep their type. An extension (infinity's spelling)",
    )
    model: str | None = Field(None, description="a served model's id; may be left out when the server serves one")
    dimensions: int | None = Field(None, ge=1, description="keep the first N dimensions, then re-normalise")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes, base64-encoded"
    )
    task_type: TaskType = Field(
        "search_document", description="the texts' prefix; an extension (OpenAI's API has no task types)"
    )

    @field_validator("input", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise PydanticCustomError(
                "input",
                "input must be a string or a list of strings and parts, not {kind}",
                {"kind": type(value).__name__},
            )
        if not value:
            raise PydanticCustomError("input", "input is empty: give a string or a non-empty list of strings and parts")
        return [_input_item(i, item) for i, item in enumerate(value)]


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(20, ge=1, le=500, description="how many results")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="leave out results scoring below this")
    min_relevance: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="only results at least this relevant (0..1); default: the collection's default bar for a "
        "query of one text, none (0) for image, item and weighted queries. When no result reaches it, the "
        "nearest are returned with match false and matches 0",
    )
    path_prefix: UnicodeStr | None = Field(
        None, description="only items whose path, URL, shard or key starts with this"
    )
    caption_contains: UnicodeStr | None = Field(None, description="only items whose caption contains this (any case)")
    model: UnicodeStr | None = Field(
        None,
        description="the served model that embeds the query (default: the collection's); one of another latent "
        "space than the collection's is refused (400)",
    )


MAX_SEARCH_TERMS = 16  # each text term is one more query embedded


class SearchTerm(BaseModel):
    """One term of a weighted search: a text or an item, with a weight (negative: away from it)."""

    model_config = ConfigDict(extra="forbid")

    text: UnicodeStr | None = Field(None, description="a text (embedded as a search_query)")
    like: UnicodeStr | None = Field(None, description="an item of the collection (its id)")
    weight: float = Field(
        1.0, ge=-100.0, le=100.0, allow_inf_nan=False, description="how strongly to move toward it; negative: away"
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchTerm:
        if (self.text is None) == (self.like is None):
            raise ValueError("each term gives exactly one of text or like")
        return self


def _something_to_move_toward(weights: list[float]) -> None:
    if not any(w > 0 for w in weights):
        raise ValueError(
            "every term has a zero or negative weight, so there is nothing to search toward: "
            "give at least one term with a positive weight"
        )


class SearchRequest(SearchFilters):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"text": "a red circle", "k": 5},
                {"terms": [{"text": "a heart"}, {"text": "red", "weight": -1}], "k": 10},
            ]
        }
    )

    text: str | None = Field(None, description="search by this text (embedded as a search_query)")
    like: UnicodeStr | None = Field(None, description="search by this item of the collection (its id)")
    terms: list[SearchTerm] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SEARCH_TERMS,
        description="search by several weighted texts and items: the query is the normalised weighted sum "
        "of their unit vectors (items named here are left out of the results)",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if sum(x is not None for x in (self.text, self.like, self.terms)) != 1:
            raise ValueError("give exactly one of text (a query), like (an item id) or terms (weighted texts, items)")
        if self.terms is not None:
            _something_to_move_toward([term.weight for term in self.terms])
        return self

    def query_terms(self) -> list[SearchTerm]:
        """The query as terms (`text` and `like` are one term of weight 1)."""
        if self.terms is not None:
            return self.terms
        return [SearchTerm(text=self.text, like=self.like, weight=1.0)]  # exactly one of the two is set


class SearchImageFields(SearchFilters):
    """The fields of the multipart image search besides the image (`terms` arrives as JSON text)."""

    image_weight: float = Field(
        1.0, ge=-100.0, le=100.0, allow_inf_nan=False, description="the uploaded image's weight among the terms"
    )
    terms: list[SearchTerm] | None = Field(None, max_length=MAX_SEARCH_TERMS - 1)

    @model_validator(mode="after")
    def _direction(self) -> SearchImageFields:
        _something_to_move_toward([self.image_weight, *(term.weight for term in self.terms or [])])
        return self


# The form routes read their bodies themselves (to keep their own limits and messages), so FastAPI
# cannot see their fields: these schemas document them (`openapi_extra`).
IMAGE_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "description": "a served model's id; may be left out when the server serves one"},
        "images": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "one file part per image (PNG, JPEG, WebP, GIF or BMP)",
        },
        "urls": {
            "type": "array",
            "items": {"type": "string"},
            "description": "images the server fetches (only with --allow-urls)",
        },
        "dimensionality": {"type": "integer", "minimum": 1, "description": "keep the first N dimensions"},
    },
}
IMAGE_URL_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {key: IMAGE_FORM["properties"][key] for key in ("model", "urls", "dimensionality")},
}


def _form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """A model field's schema as a form field: a form cannot send null, so an optional field is
    its non-null type (left out to mean "none")."""
    field = {k: v for k, v in schema.items() if k not in ("title", "anyOf", "default")}
    if "anyOf" in schema:
        (field_type,) = [option for option in schema["anyOf"] if option != {"type": "null"}]
        field.update(field_type)
    if schema.get("default") is not None:
        field["default"] = schema["default"]
    return field


SEARCH_IMAGE_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "the query image"},
        **{
            name: _form_field(schema)
            for name, schema in SearchImageFields.model_json_schema()["properties"].items()
            if name != "terms"
        },
        "terms": {
            "type": "string",
            "description": "more terms, as a JSON list like the JSON search's terms "
            '(`[{"text": "at night"}, {"text": "people", "weight": -1}]`); the query is the normalised '
            "weighted sum of the image's and the terms' unit vectors",
        },
    },
}


# -- responses -----------------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    """Every error, whatever its status."""

    detail: str = Field(..., description="what went wrong, and what to do about it")


class Usage(BaseModel):
    prompt_tokens: int = Field(..., description="tokens embedded (0 for images)")
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """Nomic's embedding response."""

    embeddings: list[list[float]] = Field(..., description="one unit vector per input, in order")
    usage: Usage
    model: str = Field(..., description="the model that embedded them")
    space: str = Field(
        ...,
        description="the latent space the vectors are in (beyond Nomic's shape): vectors "
        "are comparable only within one space",
    )
    runtime: str = Field(
        ...,
        description="the runtime and precision that made the vectors, e.g. openvino-fp32 (beyond Nomic's "
        "shape); any runtime but torch-fp32 is within cosine 0.999 of it",
    )


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int = Field(..., description="the position in input of what this vector embeds")
    embedding: list[float] | str = Field(..., description="the vector; a base64 string with encoding_format=base64")


class OpenAIUsage(BaseModel):
    prompt_tokens: int = Field(..., description="text tokens embedded (images count none)")
    total_tokens: int = Field(..., description="the same as prompt_tokens")
    images: int = Field(..., description="images embedded (an extension)")


class OpenAIEmbeddingResponse(BaseModel):
    """OpenAI's embeddings response: `data[i]` answers `input[i]`, texts and images alike."""

    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage
    space: str = Field(..., description="the latent space the vectors are in (an extension)")
    runtime: str = Field(
        ...,
        description="the runtime and precision that made the vectors (an extension); a request whose texts and "
        "images ran on different runtimes names both, as 'torch-fp32 (text), openvino-int8 (image)'",
    )


class ModelStatus(BaseModel):
    status: ModelState
    error: str | None = Field(None, description="why a model failed or its worker stopped")


class Identity(BaseModel):
    name: str
    fingerprint: str
    dim: int


class ReferenceAgreement(BaseModel):
    """How close a served forward stays to PyTorch fp32 on the packaged reference set, measured at start-up."""

    runtime: str = Field(..., description="the runtime the forward runs on")
    precision: str
    min_cosine: float | None = Field(
        ..., description="the lowest cosine between this runtime's and PyTorch fp32's vector of one reference item"
    )
    items: int = Field(..., description="reference items embedded")
    reference: bool = Field(..., description="true when the runtime is PyTorch fp32 itself: 1.0 by construction")
    error: str | None = Field(None, description="why the check could not run (the model still serves)")


class ModelInfo(BaseModel):
    """One served model. A model that has not loaded has only id, object, kind, status (and error)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(..., description="what clients pass as `model`")
    object: Literal["model"]
    kind: str | None = Field(..., description="the model family; null until it loads")
    status: ModelState
    error: str | None = Field(None, description="why the model failed or its worker stopped")
    owned_by: str | None = None
    name: str | None = None
    space: str | None = None
    identity: Identity | None = None
    dimension: int | None = None
    modalities: list[Literal["text", "image"]] | None = None
    max_tokens: int | None = None
    task_types: list[str] | None = Field(None, description="the task types it takes (its prompt names)")
    text_runtime: str | None = Field(None, description="the runtime and precision text forwards run on")
    text_runtime_reason: str | None = None
    image_runtime: str | None = Field(None, description="the runtime and precision image forwards run on")
    image_runtime_reason: str | None = None
    image_batch: int | None = Field(None, description="images per forward on that runtime")
    reference_agreement: dict[Literal["text", "image"], ReferenceAgreement] | None = Field(
        None, description="per modality: the chosen runtime's agreement with PyTorch fp32 on the reference set"
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelInfo]


class UserResponse(BaseModel):
    """What Nomic's client checks its key against; nothing else reads it."""

    id: str
    organizations: list[dict[str, Any]]
    default_organization: str | None


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"] = Field(..., description="ok: every model and collection is ready")
    models: dict[str, ModelStatus]
    collections: dict[str, Literal["loading", "ready", "failed"]] | None = Field(
        None, description="present when the server has collections"
    )


class SearchResult(BaseModel):
    id: str
    score: float = Field(..., description="cosine similarity to the query")
    relevance: float | None = Field(
        None,
        description="0..1: the share of generic queries' best matches in this collection that the score beats "
        "(null: the collection has no relevance calibration; rebuild it)",
    )
    match: bool = Field(True, description="whether it reaches the search's min_relevance")
    path: str | None
    url: str | None
    caption: str | None
    width: int | None
    height: int | None
    thumbnail: str = Field(..., description="the URL of the item's thumbnail on this server")


class SearchResponse(BaseModel):
    collection: str
    space: str
    query: dict[str, str] = Field(..., description="what was searched by: text, like or image")
    results: list[SearchResult]
    matches: int = Field(
        ...,
        description="how many results reach min_relevance; 0: nothing here looks like the query, and results "
        "holds the nearest items all the same, each with match false",
    )
    min_relevance: float | None = Field(None, description="the bar applied (null: none)")


class CollectionInfo(BaseModel):
    name: str
    space: str
    model: str
    served_model: str | None
    items: int
    dim: int
    search: str
    skipped: int
    updated: str | None = None
    status: str
    provenance: dict[str, Any] | None = Field(
        None,
        description="what made the vectors: query/document prefix, rows per runtime and precision (made_by), "
        "preprocessing, versions; null when unknown (a collection built before it was recorded)",
    )


class CollectionList(BaseModel):
    object: str = "list"
    data: list[CollectionInfo]


class ItemResponse(BaseModel):
    """An item's metadata, as the collection recorded it."""

    id: str
    score: float | None = Field(..., description="null here (items are not scored)")
    path: str | None
    url: str | None
    caption: str | None
    key: str
    shard: str | None
    offset: int | None
    length: int | None
    width: int | None
    height: int | None
    sha256: str | None
    size: int | None
    mtime_ns: int | None
    thumbnail: str


# -- error responses, for a route's `responses=` ----------------------------------------------------------
_ERRORS = {
    400: "the request cannot be served as sent: an undecodable image, no images, a model without this "
    "modality, a query model of another latent space than the collection's, a URL refused or not fetched",
    401: "no API key, or not a key this server accepts",
    404: "no such model, collection or item",
    413: "too many items, too large a body or too many pixels",
    415: "not a content type or image format this route reads",
    422: "a body, field or parameter that is not valid",
    429: "the model's queue is full: retry after Retry-After seconds",
    503: "the model or collection is still loading (retry after Retry-After seconds), failed, or its worker stopped",
}
_HEADERS = {
    401: {
        "WWW-Authenticate": {"description": "the scheme to authenticate with (Bearer)", "schema": {"type": "string"}}
    },
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait (sent when a retry can help)", "schema": {"type": "string"}}},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries documenting `statuses` with the ErrorResponse body."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorResponse, "description": _ERRORS[status]}
        if status in _HEADERS:
            out[status]["headers"] = _HEADERS[status]
    return out
