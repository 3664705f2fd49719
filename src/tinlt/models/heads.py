"""Classifier heads as objects: each owns its logits, its class rows and how they start.

A head maps L2-normalised image embeddings (B, D) to logits (B, C):

* :class:`TextHead` (``model.head: text``, TIN's): ``exp(logit_scale) * cos(image, row_c)``,
  the rows being the class prompts' text features, which TIN computes (and caches) from
  its text tower and passes in; the head owns only the logit scale (learnable, or a fixed
  buffer; clamped at 100 like CLIP's);
* :class:`LinearHead` (``linear``): ``W x + b``; in eval mode it can tau-normalise its rows
  (``train.tau_norm``, Kang et al. 2020; bias dropped);
* :class:`CosineHead` (``cosine``, LIFT's): ``scale * cos(image, w_c)``, a learnable
  unit-normalised row per class, fixed scale.

Heads register by name (:func:`register_head`), which also tells the config the allowed
value of ``model.head``; a new head is one new class in one module. :func:`prompt_rows`
gives the template-ensembled class text features a linear or cosine head can start from
(``model.classifier_init: text``); rows from training images (class means, a probe) need
data and are the engine's (engine/classifier_init.py).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TinltError
from .adjust import tau_normalize_weight

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on exp(logit_scale)
HEADS: dict[str, type] = {}


def register_head(name: str):
    """Class decorator: ``@register_head("text")``; the name becomes a ``model.head`` value."""
    def wrap(cls):
        cls.name = name
        HEADS[name] = cls
        from ..config import register_choice

        register_choice("model.head", name)
        return cls
    return wrap


def head_class(name: str) -> type:
    from ..config import check_choice

    check_choice("model.head", name)
    return HEADS[name]


class Head(nn.Module):
    """The head contract (see the module doc)."""

    name = ""
    needs_text = False  # its rows are the class prompts' text features (TIN passes them in)
    has_weights = True  # it has per-class weights of its own (cRT, classifier_init, tau-norm apply)

    def forward(self, image: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @torch.no_grad()
    def set_rows(self, rows: torch.Tensor) -> None:
        """Start from (C, D) unit rows (``model.classifier_init``)."""
        raise TinltError(f"model.classifier_init applies to a head with weights of its own, not model.head={self.name}"
                         " (its rows are its prompts' features)")

    def set_tau_norm(self, tau: Optional[float]) -> None:
        if tau is not None:
            raise TinltError(f"tau-norm needs model.head=linear; model.head={self.name} has unit-norm rows already, "
                             "so tau-normalisation would be the identity")

    @property
    def tau_norm(self) -> Optional[float]:
        return None

    def _check_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if tuple(rows.shape) != tuple(self.weight.shape):
            raise TinltError(f"model.classifier_init: rows of shape {tuple(rows.shape)} do not fit the head "
                             f"{tuple(self.weight.shape)} (image and text embeddings must share a width)")
        return F.normalize(rows.float(), dim=-1).to(self.weight)


@register_head("text")
class TextHead(Head):
    """``exp(logit_scale) * image @ normalize(rows).T``; ``logit_scale`` trains unless fixed."""

    needs_text, has_weights = True, False

    def __init__(self, logit_scale: float = 1 / 0.07, learn: bool = True) -> None:
        super().__init__()
        if not logit_scale > 0:
            raise TinltError(f"model.logit_scale = {logit_scale}; must be > 0")
        init = torch.tensor(math.log(logit_scale), dtype=torch.float32)
        if learn:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, image: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        if rows is None:
            raise TinltError("the text head needs the class text features")
        rows = F.normalize(rows, dim=-1).to(image.dtype)
        return self.scale().to(image.dtype) * image @ rows.t()


@register_head("linear")
class LinearHead(nn.Linear, Head):
    """``W x + b`` on the normalised embedding; in eval mode with tau-norm: rows
    ``w_c / ||w_c||^tau``, bias dropped (how Kang et al. evaluate)."""

    def __init__(self, in_features: int, out_features: int, **_) -> None:
        nn.Linear.__init__(self, in_features, out_features)
        self._tau: Optional[float] = None

    def forward(self, image: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.training and self._tau is not None:
            return F.linear(image, tau_normalize_weight(self.weight, self._tau))
        return F.linear(image, self.weight, self.bias)

    @torch.no_grad()
    def set_rows(self, rows: torch.Tensor, scale: float = 25.0) -> None:
        """The rows times ``scale`` with zero bias, so its first logits equal a cosine head's."""
        self.weight.copy_(self._check_rows(rows) * scale)
        self.bias.zero_()

    def set_tau_norm(self, tau: Optional[float]) -> None:
        self._tau = None if tau is None else float(tau)

    @property
    def tau_norm(self) -> Optional[float]:
        return self._tau


@register_head("cosine")
class CosineHead(Head):
    """logits = scale * normalize(x) @ normalize(weight).T; ``weight`` (C, D) trains, ``scale`` is fixed."""

    def __init__(self, in_features: int, out_features: int, scale: float = 25.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scale = int(in_features), int(out_features), float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.in_features**-0.5)

    def forward(self, x: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t().to(x.dtype)

    @torch.no_grad()
    def set_rows(self, rows: torch.Tensor, scale: float = 25.0) -> None:
        self.weight.copy_(self._check_rows(rows))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


def ensemble_prompts(features: torch.Tensor, num_classes: int, num_templates: int) -> torch.Tensor:
    """(C * T, D) prompt features, class-major -> (C, D): each L2-normalised, averaged over
    templates, renormalised (CLIP's prompt ensembling)."""
    feats = F.normalize(features, dim=-1).reshape(num_classes, num_templates, -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


@torch.no_grad()
def prompt_rows(text_tower: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                batch_size: int = 256) -> torch.Tensor:
    """(C, D) unit rows: the text tower's template-ensembled features of the class prompts."""
    names = [c.replace("_", " ") for c in classnames]
    prompts = [t.replace("{}", n) for n in names for t in templates]
    was_training = text_tower.training
    text_tower.eval()
    try:
        parts = []
        for start in range(0, len(prompts), batch_size):
            tokens = text_tower.tokenize(prompts[start:start + batch_size], truncate=True)
            parts.append(text_tower(tokens).float())
    finally:
        text_tower.train(was_training)
    return ensemble_prompts(torch.cat(parts), len(names), len(templates))
