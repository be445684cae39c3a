"""The request bodies, as pydantic models with each API's field names and defaults.

OpenAI (the API reference of /v1/embeddings, /v1/completions, /v1/chat/completions): unknown
fields refused ("Unrecognized request argument supplied", as the OpenAI API answers); our
extensions top_k, repetition_penalty and min_tokens (vLLM's names). text-embeddings-inference
(router/src/http/types.rs: EmbedRequest, EmbedAllRequest, RerankRequest, TokenizeRequest,
DecodeRequest) and
LibreTranslate (/translate: q, source, target, format, alternatives, api_key): unknown fields
ignored, as those servers do."""
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(ge=1)]
TokenIds = list[Annotated[int, Field(ge=0)]]


class _OpenAI(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingsRequest(_OpenAI):
    """OpenAI POST /v1/embeddings: input (a string, strings, or token-id lists), encoding_format
    float | base64, dimensions (Matryoshka truncation)."""
    input: Union[str, list[str], TokenIds, list[TokenIds]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[PositiveInt] = None
    user: Optional[str] = None


class StreamOptions(_OpenAI):
    """OpenAI stream_options: include_usage adds a last event with the usage object."""
    include_usage: bool = False


class _Sampling(_OpenAI):
    model: Optional[str] = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = None
    user: Optional[str] = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    logit_bias: Optional[dict[str, float]] = None
    # extensions (vLLM's names): the model's generate options
    top_k: Annotated[int, Field(ge=0)] = 0
    repetition_penalty: Annotated[float, Field(gt=0)] = 1.0
    min_tokens: Annotated[int, Field(ge=0)] = 0


class CompletionRequest(_Sampling):
    """OpenAI POST /v1/completions: prompt (strings or token-id lists), max_tokens, logprobs (0..5:
    the chosen token's), echo; best_of only equal to n, suffix refused."""
    prompt: Union[str, list[str], TokenIds, list[TokenIds]]
    max_tokens: Optional[PositiveInt] = 16
    logprobs: Optional[Annotated[int, Field(ge=0, le=5)]] = None
    echo: bool = False
    best_of: Optional[PositiveInt] = None
    suffix: Optional[str] = None


class ContentPart(BaseModel):
    """A chat message's text part (OpenAI content parts: only type \"text\")."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message: role, content (a string or text parts); other fields (name, ...) go to the
    chat template."""
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: passed to the template
    role: str
    content: Union[str, list[ContentPart], None] = None


class ChatRequest(_Sampling):
    """OpenAI POST /v1/chat/completions: messages (at least one), max_tokens or
    max_completion_tokens, logprobs / top_logprobs, response_format text only."""
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Optional[PositiveInt] = None
    max_completion_tokens: Optional[PositiveInt] = None
    logprobs: bool = False
    top_logprobs: Optional[Annotated[int, Field(ge=0, le=20)]] = None
    response_format: Optional[dict] = None


class TeiInputs(_Lenient):
    """TEI's inputs: a string or a list of strings (prompt_name accepted, unused)."""
    inputs: Union[str, list[str]]
    prompt_name: Optional[str] = None


class EmbedRequest(TeiInputs):
    """TEI POST /embed: truncate, truncation_direction, normalize, dimensions."""
    truncate: bool = False
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"
    normalize: bool = True
    dimensions: Optional[PositiveInt] = None


class EmbedAllRequest(TeiInputs):
    """TEI POST /embed_all: the last hidden states of each input."""
    truncate: bool = False
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"


class RerankRequest(_Lenient):
    """TEI POST /rerank: query, texts, truncate, raw_scores (logits, not sigmoid), return_text."""
    query: str
    texts: list[str]
    truncate: bool = False
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"
    raw_scores: bool = False
    return_text: bool = False


class TokenizeRequest(TeiInputs):
    """TEI POST /tokenize: add_special_tokens."""
    add_special_tokens: bool = True


class DecodeRequest(_Lenient):
    """TEI POST /decode: ids (one list or several), skip_special_tokens."""
    ids: Union[TokenIds, list[TokenIds]]
    skip_special_tokens: bool = True


class TranslateRequest(_Lenient):
    """LibreTranslate POST /translate (JSON or form): q (a text or a list of texts), source
    ("auto" or a language code), target, format text | html, alternatives (0-16 more
    translations, the n-best), api_key; and our beam search options num_beams (1-64),
    length_penalty, max_new_tokens."""
    q: Union[str, list[str]]
    source: str = "auto"
    target: str
    format: Literal["text", "html"] = "text"
    alternatives: Annotated[int, Field(ge=0, le=16)] = 0
    api_key: Optional[str] = None
    # our beam search options
    num_beams: Optional[Annotated[int, Field(ge=1, le=64)]] = None
    length_penalty: float = 1.0
    max_new_tokens: Optional[PositiveInt] = None
