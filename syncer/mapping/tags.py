"""MLflow tags -> Aim's description, labels and params. Pure."""

from __future__ import annotations

from dataclasses import dataclass

NOTE_TAG = "mlflow.note.content"
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"
SOURCE_TAG = "mlflow.source.name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"


@dataclass(frozen=True)
class TagSplit:
    description: str | None
    user_tags: dict[str, str]  # non-`mlflow.*` tags, verbatim
    system_tags: dict[str, str]  # `mlflow.*` tags


def split_tags(tags: dict[str, str]) -> TagSplit:
    user = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    system = {k: v for k, v in tags.items() if k.startswith("mlflow.")}
    return TagSplit(tags.get(NOTE_TAG) or None, user, system)


def tag_labels(user_tags: dict[str, str]) -> list[str]:
    """Aim labels for the runs table's Tags column: `key=value` (just `key` when empty)."""
    return sorted(f"{k}={v}" if v != "" else k for k, v in user_tags.items())
