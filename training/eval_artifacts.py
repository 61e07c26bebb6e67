"""End-of-run artifacts: a confusion-matrix image per language and a text file of sample predictions.

The images are drawn with Pillow, which every install of this project already has (matplotlib,
MLflow and Aim all depend on it), so no plotting library is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix(labels, predictions, num_labels: int) -> np.ndarray:
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    for gold, pred in zip(labels, predictions):
        cm[int(gold), int(pred)] += 1
    return cm


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _text(draw, xy, text, font, fill, anchor="mm"):
    try:
        draw.text(xy, text, font=font, fill=fill, anchor=anchor)
    except ValueError:  # bitmap fonts take no anchor
        w, h = draw.textbbox((0, 0), text, font=font)[2:]
        x, y = xy
        draw.text((x - w / 2, y - h / 2), text, font=font, fill=fill)


def save_confusion_matrix_png(cm: np.ndarray, label_names, title: str, path: Path) -> Path:
    """Draw ``cm`` (rows: gold label, columns: predicted label) as a PNG heat map with counts."""
    from PIL import Image, ImageDraw

    n = len(label_names)
    cell, left, top, right, bottom = 110, 150, 90, 30, 40
    width, height = left + n * cell + right, top + n * cell + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small, big = _font(16), _font(13), _font(18)
    _text(draw, (width / 2, 22), title, big, "black")
    _text(draw, (left + n * cell / 2, 60), "predicted", small, "dimgray")
    row_sums = cm.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(n):
        _text(draw, (left - 10, top + i * cell + cell / 2), label_names[i], small, "black", anchor="rm")
        for j in range(n):
            frac = float(cm[i, j] / row_sums[i, 0])
            # white -> dark blue with the share of the gold row predicted as column j
            colour = tuple(int(255 + (c - 255) * frac) for c in (8, 48, 107))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour, outline="gray")
            _text(draw, (x0 + cell / 2, y0 + cell / 2), str(int(cm[i, j])), font, "white" if frac > 0.5 else "black")
    for j in range(n):
        _text(draw, (left + j * cell + cell / 2, top - 12), label_names[j], small, "black")
    _text(draw, (left - 10, 60), "gold", small, "dimgray", anchor="rm")
    _text(
        draw,
        (width / 2, height - bottom / 2),
        f"n = {int(cm.sum())}, accuracy = {np.trace(cm) / max(cm.sum(), 1):.3f}",
        small,
        "dimgray",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def write_sample_predictions(samples_by_lang: dict, accuracy: dict, label_names, path: Path) -> Path:
    """``samples_by_lang``: {lang: list of (premise, hypothesis, gold id, predicted id, probability of the
    prediction)}; ``accuracy``: {lang: accuracy on the whole evaluation set}. Writes a UTF-8 text file."""
    lines = []
    for lang, samples in samples_by_lang.items():
        lines.append(f"=== {lang}: accuracy {accuracy[lang]:.3f}; {len(samples)} sample predictions ===")
        for premise, hypothesis, gold, pred, prob in samples:
            mark = "ok   " if int(pred) == int(gold) else "WRONG"
            lines.append(f"[{mark}] premise:    {premise}")
            lines.append(f"        hypothesis: {hypothesis}")
            lines.append(f"        gold: {label_names[int(gold)]}  predicted: {label_names[int(pred)]} (p={prob:.2f})")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
