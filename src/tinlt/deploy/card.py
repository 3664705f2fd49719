"""What a prediction backend says about itself: :func:`model_card` and :func:`rare_class`.

``GET /v1/model`` (``tinlt serve``) and ``tinlt mine`` report the card: class names,
training counts, threshold, preprocessing, tinlt version, the source checkpoint and the
served file's SHA-256. Works for both backends (ONNX metadata, or the checkpoint's own
fields) without importing torch.
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import TinltError


def model_card(backend: Any) -> dict:
    """JSON-ready description of a backend: what it says about itself (``backend.card()``),
    its classes and threshold, and the tinlt release serving it."""
    from .. import __version__

    rule = backend.rule
    card: dict[str, Any] = {"classnames": list(backend.classnames), "threshold": None}
    if rule is not None:
        card["threshold"] = {"value": rule.value, "positive_class": rule.positive_name}
    card.update(backend.card(), serving_tinlt_version=__version__)
    return card


def rare_class(backend: Any, name: Optional[str] = None) -> int:
    """Index of ``name``, else the threshold's positive class, else the class with the fewest
    training images; TinltError naming the classes when none of these says."""
    classes = list(backend.classnames)
    if name is not None:
        if name not in classes:
            from ..errors import did_you_mean

            raise TinltError(f"--class {name!r}: not a class of this model{did_you_mean(name, classes)} "
                             f"(classes: {', '.join(classes[:10])})")
        return classes.index(name)
    if backend.rule is not None:
        return int(backend.rule.positive)
    counts = model_card(backend).get("train_counts") or []
    if len(counts) == len(classes) and counts:
        return int(min(range(len(counts)), key=lambda i: (counts[i], -i)))
    raise TinltError("which class is rare? the model has no threshold and no training counts: give --class NAME")
