"""Which artifacts Aim can show, and as what. Pure: decided from the file name."""

from __future__ import annotations

import os

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
TEXT_EXT = {
    ".txt",
    ".log",
    ".json",
    ".jsonl",
    ".yaml",
    ".yml",
    ".md",
    ".csv",
    ".tsv",
    ".py",
    ".cfg",
    ".ini",
    ".toml",
    ".sh",
    ".rst",
    ".xml",
    ".sql",
    ".ipynb",
}
AUDIO_EXT = {".wav", ".mp3", ".flac", ".ogg"}


def artifact_kind(path: str) -> str | None:
    """'image', 'text', 'audio', or None (listed, not copied)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXT:
        return "image"
    if ext in TEXT_EXT:
        return "text"
    if ext in AUDIO_EXT:
        return "audio"
    return None
