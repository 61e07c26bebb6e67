"""MLflow tags -> Aim's description, notes, labels and params. Pure."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

NOTE_TAG = "mlflow.note.content"
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"
SOURCE_TAG = "mlflow.source.name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"

# values that name one thing each (a run, a configuration, a commit): a UUID, or a hex digest of 8
# characters or more with letters and digits (git SHAs, MLflow run ids, `sha256(...)[:12]`)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}$")


@dataclass(frozen=True)
class TagSplit:
    description: str | None
    user_tags: dict[str, str]  # non-`mlflow.*` tags, verbatim
    system_tags: dict[str, str]  # `mlflow.*` tags


def split_tags(tags: dict[str, str]) -> TagSplit:
    user = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    system = {k: v for k, v in tags.items() if k.startswith("mlflow.")}
    return TagSplit(tags.get(NOTE_TAG) or None, user, system)


def is_identifier(value: str) -> bool:
    """A generated identifier (a UUID, a hex digest): the same in no two unrelated runs, so as an
    Aim tag it would add one entry per run to Aim's global tag list."""
    value = value.strip()
    return bool(_UUID.match(value) or _HEX.match(value))


@dataclass(frozen=True)
class LabelPolicy:
    """Which user tags become Aim labels (tags in Aim's global tag list and the runs table's Tags
    column). By default every one but those whose value is a generated identifier; `exclude`
    (`--no-label-tag`, globs on the key) leaves more out, `include` (`--label-tag`) brings a key
    back whatever its value. Every tag stays in the `tags` param (searchable: `run.tags.<key>`).
    Decided from the run's own tag alone: the same in every round, whatever other runs exist."""

    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    def labels(self, user_tags: dict[str, str]) -> list[str]:
        """Aim labels for the runs table's Tags column: `key=value` (just `key` when empty)."""
        return sorted(f"{k}={v}" if v != "" else k for k, v in user_tags.items() if self.is_label(k, v))

    def is_label(self, key: str, value: str) -> bool:
        if _matches(key, self.include):
            return True
        return not _matches(key, self.exclude) and not is_identifier(value)


def tag_labels(user_tags: dict[str, str], policy: LabelPolicy | None = None) -> list[str]:
    """Aim labels of a run's user tags, as `policy` (the default one) says."""
    return (policy or LabelPolicy()).labels(user_tags)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)
