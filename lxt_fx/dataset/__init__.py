"""Dataset attribution: every row of a JSONL file explained, in one process or under ``torchrun``, into
safetensors shards and a JSONL index; a killed run resumes doing each row exactly once (see :mod:`.run`)."""

from .rows import DatasetError, Row, read_rows
from .run import Summary, attribute
from .shards import INDEX, done_rows, load_relevance

__all__ = ["INDEX", "DatasetError", "Row", "Summary", "attribute", "done_rows", "load_relevance", "read_rows"]
