"""XNLI data: the real data set from the Hugging Face hub, or the small one shipped in training/data/.

Both come back in the same shape as the hub's ``facebook/xnli``: columns ``premise``,
``hypothesis`` and ``label`` (a ``ClassLabel`` with the names entailment/neutral/contradiction).
"""

from __future__ import annotations

from pathlib import Path

TECHNIQUES = ("fine-tune", "feature-extraction")  # train everything / train only the classification head
LANGUAGES = ("en", "de", "fr", "es", "ar", "zh")
# Every language XNLI has; the shipped data set covers LANGUAGES only.
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
LABEL_NAMES = ("entailment", "neutral", "contradiction")
HUB_DATASET = "facebook/xnli"
LOCAL_DATA_DIR = Path(__file__).resolve().parent / "data" / "xnli_tiny"


def local_data_file(split: str, lang: str) -> Path:
    return LOCAL_DATA_DIR / f"{split}.{lang}.jsonl"


def local_languages(split: str) -> list[str]:
    return sorted(p.name.split(".")[1] for p in LOCAL_DATA_DIR.glob(f"{split}.*.jsonl"))


def _features():
    from datasets import ClassLabel, Features, Value

    return Features(
        {"premise": Value("string"), "hypothesis": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES))}
    )


def load_local(split: str, lang: str):
    """One split of the shipped data set, loaded with ``datasets`` like any JSON data set."""
    from datasets import load_dataset

    path = local_data_file(split, lang)
    if not path.is_file():
        have = ", ".join(local_languages(split)) or "none"
        raise ValueError(f"the shipped data set has no {split} set for {lang!r} (it has: {have})")
    return load_dataset("json", data_files=str(path), split="train", features=_features())


def load_hub(split: str, lang: str):
    """One split of the real XNLI, from the hub (or the local datasets cache)."""
    from datasets import load_dataset

    return load_dataset(HUB_DATASET, lang, split=split)


def load_xnli(
    source: str,
    eval_languages,
    num_train_samples: int,
    seed: int,
    train_language: str = "en",
):
    """Return ``(train, {lang: validation})``; ``train`` is ``num_train_samples`` shuffled English pairs."""
    loader = load_local if source == "local" else load_hub
    train = loader("train", train_language).shuffle(seed=seed)
    train = train.select(range(min(num_train_samples, len(train))))
    evals = {lang: loader("validation", lang) for lang in eval_languages}
    return train, evals
