"""Typed errors. Every message names the file, key or option at fault and how to fix it."""


class MlxseekError(Exception):
    """Base class for every error mlxseek raises on bad input.

    field: the input field, key or option at fault when there is one (e.g. "messages[2].content",
    "max_tokens"); the server answers it as the error's `param` instead of reading it back out of the text.
    """

    def __init__(self, *args, field: str | None = None):
        super().__init__(*args)
        self.field = field


class ConfigError(MlxseekError):
    """config.json is missing, malformed, or describes a model mlxseek cannot build."""


class CheckpointError(MlxseekError):
    """A checkpoint folder, shard, index or header is missing or corrupt."""


class WeightMismatchError(CheckpointError):
    """Checkpoint keys or shapes do not match the model built from config.json."""


class FormatVersionError(CheckpointError):
    """A converted folder was written by an incompatible mlxseek format version."""


class ConversionError(MlxseekError):
    """`mlxseek convert` cannot proceed (bad options, no disk space, existing output)."""


class GenerationError(MlxseekError):
    """Bad generation arguments (empty prompt, prompt longer than the context, ...)."""


class DrafterMissingError(GenerationError):
    """A drafting request (`draft=`) the model has no drafter for. `field` is the option ("draft"), `draft` its
    value, `missing` the drafter module(s) the checkpoint would need ("mtp", "dspark")."""

    def __init__(self, message: str, *, draft: str, missing: tuple[str, ...]):
        super().__init__(message)
        self.field, self.draft, self.missing = "draft", draft, missing


class EvaluationError(MlxseekError):
    """`mlxseek eval` cannot score the data (missing/empty/too short file, mismatched reference model)."""


class BlasError(MlxseekError):
    """MLXSEEK_BLAS names a BLAS library that cannot be used."""


class ChatFormatError(MlxseekError):
    """A conversation cannot be rendered in the model's chat format (names the message index and field)."""


class ServeError(MlxseekError):
    """`mlxseek serve` cannot start or cannot serve a request (bad option, bad request field)."""


class QueueFullError(ServeError):
    """The server's bounded request queue is full; the client should retry later (HTTP 429)."""


class BatchingError(GenerationError):
    """Batched decoding cannot run: the model family's caches cannot be batched, or a row id is unknown."""


class VocabularyError(GenerationError):
    """A token id lies outside the model's vocabulary (config.json vocab_size); names the id and its position."""


class ConstraintError(GenerationError):
    """A structured-output schema or forced-tool grammar cannot be used for constrained decoding; `keyword`
    names the JSON-schema keyword at fault when there is one."""

    def __init__(self, message: str, *, keyword: str | None):
        super().__init__(message)
        self.keyword = keyword
