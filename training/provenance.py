"""Where a run came from, recorded the way a Trainer run tracked by Aim itself shows it: the git checkout
(MLflow's ``mlflow.source.git.*`` tags) and the installed versions of the packages the run uses (a
``requirements.txt`` artifact at the run's root, pip format).

MLflow sets the git tags itself when the entry point (``sys.argv[0]``: ``training/__main__.py`` for
``python -m training``) lies in a git checkout, as it does in a clone of this project. When it does
not (the package installed into site-packages, ``python -c``, a notebook, pytest), the checkout the
command runs in (the working directory) is used instead, as Aim's own tracker does; outside any
checkout there are no git tags.
"""

from __future__ import annotations

import os
from importlib import metadata
from urllib.parse import urlsplit, urlunsplit

REQUIREMENTS_ARTIFACT = "requirements.txt"
# What a run imports (directly, or as the Trainer's and MLflow's working parts); those installed are listed.
RUN_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "mlflow",
    "numpy",
    "pillow",  # the confusion-matrix images
    "PyYAML",  # reading a checkpoint's MLmodel on --resume
    "psutil",  # MLflow's system metrics
    "nvidia-ml-py",  # MLflow's GPU metrics, when installed
    "GitPython",  # the git tags
)


def requirements() -> str:
    """``name==version`` of each installed package of ``RUN_PACKAGES``, one a line, sorted as pip freeze does."""
    pins = {}
    for package in RUN_PACKAGES:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            continue
        name = dist.metadata["Name"] or package
        pins[name.lower()] = f"{name}=={dist.version}"
    return "".join(pins[key] + "\n" for key in sorted(pins))


def git_tags(path: str) -> dict[str, str]:
    """MLflow's git tags for the checkout holding ``path`` (with MLflow's own GitPython helpers: the same
    values MLflow records, credentials stripped from the remote's URL); {} outside a checkout."""
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    commit = get_git_commit(path)
    if not commit:
        return {}
    url = get_git_repo_url(path)
    tags = {
        MLFLOW_GIT_COMMIT: commit,
        MLFLOW_GIT_BRANCH: get_git_branch(path),
        MLFLOW_GIT_REPO_URL: _without_credentials(url) if url else None,
    }
    return {k: v for k, v in tags.items() if v}


def _without_credentials(url: str) -> str:
    """``https://user:token@host/x.git`` -> ``https://host/x.git`` (MLflow 3.17 does it too, older ones not)."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url  # also scp-like git@host:x.git, whose user is no secret
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def record_provenance(run, new_run: bool) -> None:
    """Log the requirements of the active run ``run``; on a new run that MLflow found no git checkout for,
    tag it with the working directory's (a resumed run has its tags since its first start)."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    mlflow.log_text(requirements(), REQUIREMENTS_ARTIFACT)
    if new_run and MLFLOW_GIT_COMMIT not in run.data.tags:
        tags = git_tags(os.getcwd())
        if tags:
            mlflow.set_tags(tags)
