"""The open_clip family: every open_clip model config (CLIP RN50, ViT-B/32, ..., and tinlt's
tiny-vit / tiny-rn) as a tower pair, registered with :mod:`tinlt.models.registry` as one
family whose names open_clip lists (it is asked on first use: importing it takes seconds).
"""

from __future__ import annotations

from typing import Any, Optional

from ...errors import TinltError
from ..registry import register_family
from .clip_image import OpenCLIPImageTower, openclip_image_tower
from .clip_text import OpenCLIPTextTower
from .clip_weights import MODEL_CONFIG_DIR, load_openclip_model, one_line, openclip_names


def create_openclip_towers(
        name: str, pretrained: str = "", image_size: Optional[int] = None,
) -> tuple[OpenCLIPImageTower, OpenCLIPTextTower]:
    """(image tower, text tower) of open_clip model ``name`` with ``pretrained`` weights."""
    import open_clip

    model = load_openclip_model(name, pretrained, image_size=image_size)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    image = openclip_image_tower(
        model.visual,
        image_mean=preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN),
        image_std=preprocess.get("std", open_clip.OPENAI_DATASET_STD),
        name=name,
    )
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # HF tokenizers are fetched from the hub
        raise TinltError(f"model.name = '{name}': could not load its tokenizer ({one_line(e, 160)})") from None
    text = OpenCLIPTextTower(model, tokenizer, name=name)
    return image, text


def _build(cfg: Any, image_size: Optional[int] = None):
    return create_openclip_towers(cfg.name, cfg.pretrained, image_size=image_size)


def _describe() -> list[dict]:
    import open_clip

    tiny = {p.stem for p in MODEL_CONFIG_DIR.glob("*.json")}
    tags: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    return [{"name": n, "kind": "tiny" if n in tiny else "open_clip", "pretrained": tags.get(n, [])}
            for n in openclip_names()]


register_family("open_clip", names=openclip_names, build=_build, describe=_describe)
