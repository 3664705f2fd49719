"""Loading open_clip models and their weights without a network.

Owns :func:`load_openclip_model`: local checkpoint files (OpenAI TorchScript archives,
open_clip state dicts) or open_clip pretrained tags, every failure a one-line TinltError,
and registering tinlt's tiny model configs (models/model_configs/*.json) with open_clip.
open_clip is imported on first use (it takes seconds).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ...errors import TinltError

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def register_model_configs() -> None:
    """Make tinlt's tiny configs (tiny-vit, tiny-rn) known to open_clip; idempotent."""
    import open_clip

    known = set(open_clip.list_models())
    if not all(p.stem in known for p in MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def openclip_names() -> list[str]:
    """Every model config open_clip knows, tinlt's tiny ones included."""
    import open_clip

    register_model_configs()
    return list(open_clip.list_models())


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_path(value: str) -> bool:
    return (
        "/" in value or os.sep in value or value.startswith("~")
        or Path(value).suffix.lower() in CHECKPOINT_SUFFIXES or Path(value).exists()
    )


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """OpenAI's released CLIP .pt files are TorchScript archives (a zip with constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())


# entries of OpenAI's TorchScript state dicts that are not weights
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def _load_torchscript_weights(model: nn.Module, path: Path) -> None:
    """Load a TorchScript CLIP archive (OpenAI's release format) into an open_clip model:
    what open_clip.load_checkpoint does for such files, minus the entries a traced
    module adds that are not weights (OpenAI metadata, non-persistent buffers)."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    non_persistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_METADATA and k not in non_persistent}
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    model.load_state_dict(state_dict, strict=True)


def _create(name: str, **kwargs: Any) -> nn.Module:
    import open_clip

    return open_clip.create_model(name, precision="fp32", device="cpu", **kwargs)


def load_openclip_model(name: str, pretrained: str = "", image_size: Optional[int] = None) -> nn.Module:
    """Build open_clip model ``name`` (fp32, CPU) and load ``pretrained``:

      - "" -> random init;
      - a local file: an OpenAI TorchScript archive (built with QuickGELU, as OpenAI
        trained it; ``_load_torchscript_weights``), or an open_clip state
        dict (.bin/.pt/.pth/.safetensors, also {"state_dict": ...}) via
        open_clip.create_model(name, pretrained=path);
      - an open_clip pretrained tag (e.g. "openai", "laion2b_s34b_b79k"): fetched by
        open_clip from the hub, i.e. it fails offline (TinltError says what to do).
    ``image_size`` rebuilds the model for another input size (ViT position embeddings are
    interpolated on load by open_clip).
    """
    import open_clip

    if name not in openclip_names():
        raise TinltError(f"model.name = '{name}': not an open_clip model config")
    kwargs: dict[str, Any] = {}
    if image_size:
        kwargs["force_image_size"] = int(image_size)
    pretrained = (pretrained or "").strip()
    if not pretrained:
        return _create(name, **kwargs)

    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            problem = "is not a file" if path.exists() else "not found"
            raise TinltError(f"model.pretrained: checkpoint file {problem}: {path}")
        try:
            if is_torchscript_archive(path):
                model = _create(name, force_quick_gelu=True, **kwargs)
                _load_torchscript_weights(model, path)
                return model
            return _create(name, pretrained=str(path), **kwargs)
        except TinltError:
            raise
        except Exception as e:  # corrupt file, wrong architecture, missing/unexpected keys
            raise TinltError(f"{path}: cannot load into model '{name}': {one_line(e)}") from None

    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg and not _hub_reachable():  # fail in a second instead of ~30 s of hub retries
        raise TinltError(
            f"model.pretrained = '{pretrained}': the open_clip weights for '{name}' come from the Hugging Face "
            "hub, which is not reachable from here; download the checkpoint on a connected machine and set "
            "model.pretrained=/path/to/file"
        )
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = ", ".join(tags) if tags else "none"
        raise TinltError(
            f"model.pretrained = '{pretrained}': not a file and not an open_clip tag for '{name}' "
            f"(tags: {known})"
        )
    try:
        return _create(name, pretrained=pretrained, force_quick_gelu=bool(tag_cfg.get("quick_gelu")), **kwargs)
    except Exception as e:
        raise TinltError(
            f"model.pretrained = '{pretrained}': could not fetch open_clip weights for '{name}' "
            f"({one_line(e, 120)}); download the checkpoint on a connected machine and set "
            "model.pretrained=/path/to/file"
        ) from None


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers (HF_HUB_OFFLINE=1 means no), checked once per process."""
    global _HUB
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    if _HUB is None:
        import socket

        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            _HUB = True
        except OSError:
            _HUB = False
    return _HUB


_HUB: Optional[bool] = None
