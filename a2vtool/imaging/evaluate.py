"""CLIP evaluation of rendered images: zero-shot accuracy over a fixed label set and template, with chance level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.models.text_targets import DEFAULT_TEMPLATE, prompt_for


def classification_metrics(y_true: list[int], y_pred: list[int], n_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over classes present) and macro-F1 (over classes present),
    per class precision/recall/F1/support, and the chance level (1 / n_classes)."""
    per = []
    for c in range(n_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == c and p != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per.append({"precision": prec, "recall": rec, "f1": f1, "support": tp + fn})
    present = [p for p in per if p["support"]]
    n = len(y_true)
    return {
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred)) / n if n else 0.0,
        "balanced_accuracy": sum(p["recall"] for p in present) / len(present) if present else 0.0,
        "macro_f1": sum(p["f1"] for p in present) / len(present) if present else 0.0,
        "chance": 1.0 / n_classes if n_classes else 0.0,
        "n": n,
        "per_class": per,
    }


def zero_shot(images: list[Any], labels: list[str], classes: list[str], model_name: str, device: str = "cpu",
              template: str = DEFAULT_TEMPLATE, batch_size: int = 32) -> dict[str, Any]:
    """Classify PIL `images` among `classes` (the fixed label set) with prompts `template`; also the CLIP score
    (100 x cosine of each image with its own class prompt, floored at 0, averaged)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from a2vtool.runtime import load_pretrained

    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise InputError(f"images of class {unknown[0]!r} are outside the label set {classes}")
    if len(classes) < 2:
        raise InputError("zero-shot evaluation needs at least 2 classes in the label set")
    model = load_pretrained(CLIPModel.from_pretrained, model_name, "CLIP model").to(device).eval()
    proc = load_pretrained(CLIPProcessor.from_pretrained, model_name, "CLIP processor")
    try:
        prompts = [prompt_for(c, template) for c in classes]
        with torch.inference_mode():
            tin = proc(text=prompts, return_tensors="pt", padding=True)
            text = model.get_text_features(**{k: v.to(device) for k, v in tin.items()})
            text = torch.nn.functional.normalize(getattr(text, "pooler_output", text).float(), dim=-1)
            preds: list[int] = []
            scores: list[float] = []
            truth = [classes.index(lab) for lab in labels]
            for i in range(0, len(images), batch_size):
                pix = proc(images=images[i:i + batch_size], return_tensors="pt")["pixel_values"].to(device)
                img = model.get_image_features(pixel_values=pix)
                img = torch.nn.functional.normalize(getattr(img, "pooler_output", img).float(), dim=-1)
                sim = img @ text.T
                preds += sim.argmax(-1).tolist()
                own = sim[torch.arange(len(pix)), torch.tensor(truth[i:i + batch_size])]
                scores += (100.0 * own).clamp(min=0).tolist()
                del pix, img, sim
        m = classification_metrics(truth, preds, len(classes))
        m["per_class"] = {c: v for c, v in zip(classes, m["per_class"])}
        m["clip_score"] = sum(scores) / len(scores) if scores else 0.0
        m.update(classes=list(classes), template=template, model=model_name, predictions=[classes[p] for p in preds])
        return m
    finally:
        del model, proc
        from a2vtool.imaging.pipeline import free_memory

        free_memory()


def evaluate_records(out: Path, records: list[dict[str, Any]], classes: list[str], model_name: str, device: str = "cpu",
                     template: str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Zero-shot evaluation of the PNGs listed in `records` (files relative to `out`)."""
    from PIL import Image

    images = []
    for r in records:
        with Image.open(Path(out) / r["file"]) as im:
            images.append(im.convert("RGB"))
    return zero_shot(images, [r["class"] for r in records], classes, model_name, device, template)


def metrics_table(ev: dict[str, Any]) -> Any:
    """A Rich table of per-class and overall metrics with chance level beside them."""
    from rich.table import Table

    t = Table(title=f"zero-shot CLIP ({ev['model']}, {ev['template']!r})")
    for col in ("class", "n", "precision", "recall", "F1"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, v in ev["per_class"].items():
        t.add_row(c, str(v["support"]), f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}")
    t.caption = (f"accuracy {ev['accuracy']:.3f}, balanced {ev['balanced_accuracy']:.3f}, macro-F1 {ev['macro_f1']:.3f} "
                 f"(chance {ev['chance']:.3f}); CLIP score {ev['clip_score']:.2f}")
    return t
