"""What a run gets from outside: its data set and its model, from the Hugging Face hub or, for the tiny
models, built locally. A failure to get something from the hub is one line (``HubUnavailableError``)
that points to the offline models.

``hub_reachable`` is the command line's quick check, made before the Hugging Face libraries load; its
answer travels in ``TrainConfig.hub_reachable``.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from .data import LABEL_NAMES, load_xnli
from .tiny_models import TINY_MODEL_NAMES, ensure_tiny_model, is_tiny
from .train_config import HubUnavailableError, TrainConfig, TrainingError, one_line

OFFLINE_HINT = "for offline runs use the tiny local models and the shipped data: --model-names " + " ".join(
    TINY_MODEL_NAMES
)
_HUB_ERROR_MODULES = ("huggingface_hub", "datasets", "requests", "httpx", "urllib3")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint (so that an offline machine fails fast, not after retries)."""
    import socket

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the libraries try
    endpoint = urlparse(hub_endpoint())
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_hub_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.split(".")[0] in _HUB_ERROR_MODULES


def from_hub(reachable: bool, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its hub failures turned into one ``HubUnavailableError`` naming ``what``;
    ``reachable``: False when the hub is known to be unreachable (the message then says so)."""
    try:
        return fn(*args, **kwargs)
    except TrainingError:
        raise
    except Exception as exc:
        if not _is_hub_error(exc):
            raise
        if not reachable:
            detail = f"{hub_endpoint()} cannot be reached from here, and it is not in the local cache"
        else:
            detail = f"{type(exc).__name__}: {one_line(exc)}"
        raise HubUnavailableError(f"cannot get {what} from the Hugging Face hub ({detail}); {OFFLINE_HINT}") from exc


def load_data(cfg: TrainConfig, source: str, seed: int):
    """``(train, {lang: validation})`` for one seed (the shuffle of the training pairs)."""
    load_args = (source, cfg.eval_languages, cfg.num_train_samples, seed)
    if source == "local":
        return load_xnli(*load_args)
    return from_hub(cfg.hub_reachable, "the XNLI data set", load_xnli, *load_args)


def check_models(cfg: TrainConfig, names) -> None:
    """Fail before any training if a model cannot be had (all models, not just the first)."""
    from transformers import AutoConfig

    for name in dict.fromkeys(names):
        if is_tiny(name):
            ensure_tiny_model(name)
        else:
            from_hub(cfg.hub_reachable, f"the model {name!r}", AutoConfig.from_pretrained, name)


def load_model(cfg: TrainConfig, model_name: str, seed: int):
    """The tokenizer and a sequence classifier with a fresh head of ``len(LABEL_NAMES)`` labels (seeded)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    path = str(ensure_tiny_model(model_name)) if is_tiny(model_name) else model_name
    tokenizer = from_hub(cfg.hub_reachable, f"the tokenizer of {model_name!r}", AutoTokenizer.from_pretrained, path)
    set_seed(seed)  # the classification head is initialised here: seed it
    model = from_hub(
        cfg.hub_reachable,
        f"the model {model_name!r}",
        AutoModelForSequenceClassification.from_pretrained,
        path,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: i for i, name in enumerate(LABEL_NAMES)},
    )
    return tokenizer, model
