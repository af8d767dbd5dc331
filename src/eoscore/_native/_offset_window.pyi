"""Typing stub for the native offset window (used by ``_offsets``; nothing public)."""

MIN_ENCODE_BYTES: int
MAX_SPAN: int

class OffsetWindow:
    def __init__(self) -> None: ...
