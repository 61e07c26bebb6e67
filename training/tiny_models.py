"""Tiny BERT-style models, built locally on first use, for offline runs.

A model is an ordinary Hugging Face model folder (``config.json``, ``model.safetensors``,
``tokenizer.json``...), so it is loaded with ``AutoTokenizer`` / ``AutoModelForSequenceClassification``
exactly like a hub checkpoint, and like a hub checkpoint it has no classification head:
``from_pretrained(..., num_labels=3)`` adds a freshly initialised one.

* the tokenizer is a cased ``tokenizers`` WordPiece tokenizer (BERT's normalizer and pre-tokenizer)
  whose vocabulary is learned from the shipped corpus, every language of training/data/xnli_tiny
  (see ``learn_wordpiece_vocab``);
* the encoder is a small, randomly initialised ``BertModel`` (seeded, so the build is deterministic).

Models are cached in ``$XNLI_TINY_HOME`` (default ``~/.cache/xnli-tiny``), in a folder whose name
carries a hash of the recipe and of the corpus, so a change to either builds a new one. Building
goes into a temporary folder that is then renamed into place: two processes racing to build the
same model both end up using one complete folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path

from .data import LOCAL_DATA_DIR

RECIPE_VERSION = 2
BUILD_SEED = 1234
VOCAB_SIZE = 4000
MAX_POSITIONS = 128
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TINY_MODELS: dict[str, dict] = {
    "tiny-bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "tiny-bert-wide": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
}
TINY_MODEL_NAMES = tuple(TINY_MODELS)
_BUILD_LOCK = threading.Lock()  # across threads (the build seeds torch's global RNG); processes: the rename


def is_tiny(name: str) -> bool:
    return name in TINY_MODELS


def cache_root() -> Path:
    return Path(os.environ.get("XNLI_TINY_HOME") or Path.home() / ".cache" / "xnli-tiny").expanduser()


def _corpus_files() -> list[Path]:
    return sorted(LOCAL_DATA_DIR.glob("*.jsonl"))


def _corpus_texts() -> list[str]:
    texts = []
    for path in _corpus_files():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    texts += [row["premise"], row["hypothesis"]]
    return texts


def _fingerprint(name: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([RECIPE_VERSION, BUILD_SEED, VOCAB_SIZE, MAX_POSITIONS, TINY_MODELS[name]]).encode())
    for path in _corpus_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def model_dir(name: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / f"{name}-{_fingerprint(name)}"


def learn_wordpiece_vocab(texts, normalizer, pre_tokenizer, size: int = VOCAB_SIZE) -> dict[str, int]:
    """A WordPiece vocabulary learned from ``texts``, deterministically.

    (``tokenizers``' own WordPieceTrainer breaks ties between equally frequent merges in hash-map
    order, so two builds from the same corpus differ; this one is a pure function of the corpus.)
    Words are what the tokenizer's own normalizer and pre-tokenizer make of the texts. The vocabulary:
    the special tokens; every character, word-initial and as a ``##`` continuation (so that no word
    of the corpus' scripts is ever unknown); then, by falling frequency (ties: alphabetical), whole
    words and the frequent word endings (``##s``, ``##ung``, ...) that let unseen words share pieces.
    """
    words: Counter = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({w[0] for w in words})
    cont = sorted({"##" + c for w in words for c in w[1:]})
    pieces: Counter = Counter()
    for word, n in words.items():
        if len(word) > 1:
            pieces[word] += n
        for k in range(2, min(len(word) - 1, 4) + 1):  # endings of 2-4 characters, leaving a stem
            pieces["##" + word[-k:]] += n
    ranked = sorted(pieces.items(), key=lambda item: (-item[1], item[0]))
    ranked = [p for p, n in ranked if n >= 2 or not p.startswith("##")]
    vocab = list(SPECIAL_TOKENS) + [t for t in chars + cont if t not in SPECIAL_TOKENS]
    seen = set(vocab)
    for piece in ranked:
        if len(vocab) >= size:
            break
        if piece not in seen:
            vocab.append(piece)
            seen.add(piece)
    return {token: i for i, token in enumerate(vocab)}


def _build(name: str, dest: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(  # cased, accents kept, CJK split one character a word
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = Tokenizer(
        models.WordPiece(learn_wordpiece_vocab(_corpus_texts(), normalizer, pre_tokenizer), unk_token="[UNK]")
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    tokenizer.save_pretrained(dest)

    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tok.token_to_id("[PAD]"),
        **TINY_MODELS[name],
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(BUILD_SEED)
        model = BertModel(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(dest)
    (dest / "README.md").write_text(
        f"# {name}\n\nA tiny, randomly initialised BERT-style encoder and a WordPiece tokenizer trained on the\n"
        "multilingual NLI corpus shipped in training/data/xnli_tiny. Built by training/tiny_models.py\n"
        "for offline runs; it knows nothing until it is trained.\n",
        encoding="utf-8",
    )


def ensure_tiny_model(name: str, root: Path | None = None) -> Path:
    """Return the folder of tiny model ``name``, building it first if it is not in the cache."""
    if not is_tiny(name):
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODEL_NAMES)}")
    final = model_dir(name, root)
    if (final / "config.json").is_file():
        return final
    with _BUILD_LOCK:
        if (final / "config.json").is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            _build(name, tmp)
            try:
                os.rename(tmp, final)  # atomic; fails if another process got there first
            except OSError:
                if not (final / "config.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
