"""The typed schema of a run's configuration, and how extensions grow it.

Owns the dataclasses OmegaConf checks every config against (``Config`` and its sections),
the allowed value of every key that names a method (:func:`choices`), and the extension
registry: names and keys whose meaning lives with their implementation (tuning methods and
their keys, heads, losses and their keys) are registered by the implementing module
(:func:`register_choice`, :func:`register_keys`, :func:`register_validator`), so adding one
is one new module. The schema learns them from the modules listed under the entry-point
group ``tinlt.extensions`` (tinlt's own, ``tinlt.models.builtin``, is the first) and in
``$TINLT_PLUGINS`` (comma-separated module names), imported once before the first schema is
built; this module never names them. Imports nothing of tinlt but ``errors``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from omegaconf import DictConfig, OmegaConf

from .errors import TinltError

# Allowed values of the keys that name a method, declared once. Keys whose values are
# registered by extensions (tuning methods, heads, losses) start with the values that are
# config's own ("" = unset) and grow as extensions register (see the module doc).
SPLIT_KINDS = ("list", "folder", "csv", "fashion_mnist")
CLASSIFIER_INITS = ("", "text", "class_mean", "probe", "logistic", "random")
COOP_POSITIONS = ("end", "middle", "front")
TTA_MODES = ("none", "flip", "five_crop", "ten_crop")
AUGMENTS = ("paper", "none")
SAMPLERS = ("instance", "class_balanced", "sqrt")
GROUP_MODES = ("auto", "absolute", "relative")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")
AMP_MODES = ("auto", "bf16", "fp16", "off")

STATIC_CHOICES = {
    "model.head": (),
    "model.tune_image.method": ("",),
    "model.tune_text.method": ("",),
    "model.classifier_init": CLASSIFIER_INITS,
    "model.coop.position": COOP_POSITIONS,
    "data.tta": TTA_MODES,
    "data.augment": AUGMENTS,
    "data.sampler": SAMPLERS,
    "data.groups": GROUP_MODES,
    "loss.name": (),
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "optim.lr_scaling": LR_SCALINGS,
    "train.amp": AMP_MODES,
    "train.best_checkpoint": ("val", "last"),
}
# registered values of one key also count for these (a tuning method tunes either tower)
_CHOICE_ALIASES = {"model.tune_image.method": "model.tune.method", "model.tune_text.method": "model.tune.method"}
SPLIT_KEYS = ("data.train", "data.val", "data.test")


@dataclass
class SplitConfig:
    """Where one split comes from. ``kind`` empty means the split is not used."""

    kind: str = ""  # list | folder | csv | fashion_mnist; data.val also: holdout, kfold (from data.train)
    path: str = ""  # list file, folder root, CSV file, or folder holding the IDX files
    root: str = ""  # image root that list/CSV paths are relative to (default: the file's folder)
    classnames: str = ""  # one class name per line, in label order
    split: str = "train"  # fashion_mnist: train | test
    classes: List[int] = field(default_factory=list)  # fashion_mnist: keep these source classes, relabelled 0..K-1
    lt_n_max: int = 0  # fashion_mnist long tail: class c keeps n_max * (1/ratio)^(c/(C-1)); 0 = off
    lt_ratio: float = 100.0
    counts: List[int] = field(default_factory=list)  # explicit per-class caps (override lt_*)
    per_class_limit: int = 0  # keep at most this many per class (e.g. a quick test subset); 0 = all
    fraction: float = 0.1  # data.val.kind=holdout: share of each class's training images (>= 1) held out
    seed: int = -1  # data.val.kind=holdout / kfold: the split's seed; -1 = train.seed
    folds: int = 5  # data.val.kind=kfold: stratified folds of data.train (tinlt fit)
    fold: int = 0  # data.val.kind=kfold: the fold held out


@dataclass
class DataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)  # empty: model selection uses the test split
    test: SplitConfig = field(default_factory=SplitConfig)
    image_size: int = 224
    augment: str = "paper"  # paper (crop, flip, small rotation, colour jitter) | none
    # test-time ensembling at evaluation and prediction: logits averaged over views (LIFT's TTE)
    tta: str = "none"  # none | flip | five_crop | ten_crop
    tta_expand: int = 24  # five/ten crop: resize to image_size + this, then crop image_size
    sampler: str = "instance"  # instance | class_balanced | sqrt
    num_workers: int = 2
    many_threshold: int = 100  # many: count > many_threshold
    few_threshold: int = 20  # few: count < few_threshold
    groups: str = "auto"  # absolute | relative (2 classes: common = many, rare = few) | auto
    # a pre-resized cache folder from 'tinlt data cache' (data/image_cache.py); "" = decode the files
    image_cache: str = ""
    validate: bool = True  # check every file up front (exists, non-empty, image header); report in the run folder
    strict: bool = False  # any bad sample fails the run before training; default: skip it and report it


@dataclass
class TuneConfig:
    """How one tower trains (models/tuning/; docs/tuning.md). Empty method: model.freeze_* decide.
    Each method adds its own keys (LoRA's rank, alpha, targets; ...) by registering them."""

    method: str = ""  # full | frozen | a registered method (tinlt models lists them)
    blocks: int = 0  # apply the method to the last this many blocks only (last_k: how many train); 0 = all


@dataclass
class CoopConfig:
    """Learnable prompt context for the text head (CoOp, Zhou et al. 2022); n_ctx 0 = off."""

    n_ctx: int = 0  # context tokens shared by all classes, initialised from the template's words
    position: str = "end"  # where the class name goes: end | middle | front


@dataclass
class ModelConfig:
    name: str = "ViT-B-32"  # any open_clip model, a tinlt tiny config, or an offline tower pair
    pretrained: str = ""  # local checkpoint file or open_clip pretrained tag; empty = random init
    visual_attention: bool = True
    head: str = "text"  # text (prompts through the text tower) | linear | cosine (learnable unit rows)
    # linear / cosine head: initial rows from text features, class means, a class-balanced probe, or random
    classifier_init: str = ""  # "" = text for cosine, random for linear
    cosine_scale: float = 25.0  # cosine head: fixed logit scale (LIFT's)
    # classifier_init logistic: the L2 penalty's inverse strength C; 0 = chosen on inner stratified folds
    probe_c: float = 0.0
    tune_image: TuneConfig = field(default_factory=TuneConfig)
    tune_text: TuneConfig = field(default_factory=TuneConfig)
    coop: CoopConfig = field(default_factory=CoopConfig)
    templates: List[str] = field(default_factory=lambda: ["a photo of a {}."])
    freeze_image: bool = False
    freeze_text: bool = False
    truncate_text: bool = True
    text_buckets: int = 4  # with truncate_text: encode prompts in <= this many length groups (1 = one group)
    shard_prompts: bool = True  # under torchrun, a trained text tower encodes 1/N of the prompts per rank
    embed_dim: int = 256  # shared space of the offline towers' projections; 0: no projection (linear / probe heads)
    logit_scale: float = 14.285714  # 1/0.07, CLIP's initial temperature
    learn_logit_scale: bool = True
    pretrained_image: bool = True  # offline towers: load packaged weights per tower
    pretrained_text: bool = True
    grad_checkpointing: bool = False
    # keep the image tower's BatchNorm running statistics at their pretrained values while
    # fine-tuning (affine weights still train), as detection fine-tuning does with small batches
    freeze_bn_stats: bool = False
    # keep the text tower's vocabulary table fixed: a few prompts touch a handful of its rows,
    # yet a dense optimizer update of all of them (25M values for CLIP) costs every step
    freeze_token_embeddings: bool = False
    # two-stage (cRT, Kang et al. 2020; see tinlt/engine/prepare.py)
    init_from: str = ""  # tinlt checkpoint (or run folder) to load weights from, non-strictly, before training
    reinit_head: bool = False  # linear head: fresh init after init_from
    freeze_features: bool = False  # train only the classifier: the whole image path (tower, attention) is frozen


@dataclass
class LossConfig:
    """The loss by name; each loss adds its own keys by registering them (seesaw's p, q, ...)."""

    name: str = "seesaw"  # a registered loss (seesaw, ce, focal, ...; docs/ablations.md)
    contrastive_weight: float = 0.0  # text head: add this times the image-text contrastive loss to the loss above


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_new_mult: float = 1.0  # lr multiplier for freshly initialised parts: attention, projections, heads
    lr_text_mult: float = 1.0  # lr multiplier for the text tower
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    epochs: int = 50
    batch_size: int = 128  # per device
    accum_steps: int = 1
    grad_clip: float = 0.0  # 0 = off
    # lr is for a global batch of lr_base_batch; with more devices or accumulation the lr used is
    # lr * (global/base) ("linear") or lr * sqrt(global/base) ("sqrt"); "none" uses lr as given
    lr_scaling: str = "none"
    lr_base_batch: int = 128


@dataclass
class TrainConfig:
    seed: int = 0
    output_dir: str = "runs/tin"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | off
    eval_every: int = 1  # epochs; 0 = only at the end
    max_steps: int = 0  # stop after this many optimizer steps (smoke tests); 0 = no limit
    save_every_steps: int = 0  # mid-epoch checkpoints; 0 = once per epoch
    eval_batch_size: int = 256
    channels_last: bool = True  # CUDA only: channels-last memory for convolutional image towers and their inputs
    tf32: bool = True  # CUDA only: TF32 matmuls / convolutions for fp32 work (engine/device.py)
    cudnn_benchmark: bool = True  # CUDA only: cuDNN picks the fastest algorithm for the (fixed) input shapes
    compile: bool = False  # torch.compile the training forward (slow first steps; pays off on long CUDA runs)
    # frozen image tower: keep its outputs on disk (engine/feature_cache.py); "" = off,
    # "auto" = $XDG_CACHE_HOME/tinlt/features (~/.cache/tinlt/features), or a folder
    feature_cache: str = ""
    quiet: bool = False
    # checkpoints hold only the tensors that train (and buffers) plus a pointer to the base
    # weights (model.name / model.pretrained); loading them needs those weights again
    save_trainable_only: bool = False
    report: bool = True  # write RUN_DIR/report (figures, HTML, Markdown) when training ends
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs: pip install tinlt[tensorboard])
    # evaluation-time classifier adjustments (tinlt/models/adjust.py), applied in every evaluation
    posthoc_tau: float = 0.0  # post-hoc logit adjustment: logits - tau * log(train prior); 0 = off
    posthoc_tau_grid: List[float] = field(default_factory=list)  # choose posthoc_tau from these on data.val
    early_stopping: int = 0  # stop after this many evaluations without a better val score; 0 = off
    # what best.pt holds: "val" the epoch with the best data.val score; "last" the final epoch (the
    # schedule run to its end), for a validation split too small to pick epochs by (it still
    # drives early stopping, post-hoc tau and the choice between recipes)
    best_checkpoint: str = "val"
    tau_norm: Optional[float] = None  # linear head: tau-normalise the weight rows w_c / ||w_c||^tau, bias dropped
    # keep the raw logits of every evaluated epoch on data.val in val_predictions.npz (tinlt fit pools them)
    save_val_predictions: bool = False
    # score the test split at the end (metrics.json); false: metrics.json holds the val split's (fit's folds),
    # or, with no data.val, nothing is scored at all (fit's refit: the test split is left for tinlt eval)
    final_test: bool = True


@dataclass
class Config:
    name: str = "tin"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- extensions

EXTENSION_GROUP = "tinlt.extensions"
BUILTIN = "tinlt.models.builtin"  # tinlt's own extension, also when no install metadata lists it
PLUGINS_ENV = "TINLT_PLUGINS"
KEY_SECTIONS = ("model.tune", "loss")  # sections whose keys extensions may add (model.tune: both towers)
_choices: dict[str, list[str]] = {}
_validators: list[Callable[[DictConfig], None]] = []
_keys: dict[str, list[type]] = {s: [] for s in KEY_SECTIONS}
_state = {"loaded": False, "loading": False, "schema": None}


def register_choice(key: str, name: str) -> None:
    """Allow ``name`` as a value of ``key`` ("model.tune.method", "model.head", "loss.name")."""
    names = _choices.setdefault(key, [])
    if name not in names:
        names.append(name)


def register_keys(section: str, keys: type) -> None:
    """Add the fields of dataclass ``keys`` to ``section`` (one of KEY_SECTIONS) of the schema.
    A key two extensions both declare must agree on its type and default."""
    if section not in _keys:
        raise TinltError(f"register_keys: section {section!r}; expected one of {', '.join(KEY_SECTIONS)}")
    if keys in _keys[section]:
        return
    known = {f.name: (t, f) for cls in (_section_base(section), *_keys[section])
             for f, t in zip(dataclasses.fields(cls), _hints(cls))}
    for f, t in zip(dataclasses.fields(keys), _hints(keys)):
        if f.name in known and (known[f.name][0] != t or _default(known[f.name][1]) != _default(f)):
            raise TinltError(f"config key '{section}.{f.name}' is declared twice with different types or defaults "
                             f"({keys.__module__}.{keys.__name__})")
    _keys[section].append(keys)
    _state["schema"] = None


def register_validator(check: Callable[[DictConfig], None]) -> None:
    """Run ``check(cfg)`` in :func:`validate` (an extension's checks across its keys; raise TinltError)."""
    if check not in _validators:
        _validators.append(check)


def run_validators(cfg: DictConfig) -> None:
    for check in _validators:
        check(cfg)


def check_section(section: str, node: Any) -> None:
    """Run the registered validators on ``node`` as config section ``section`` (the rest at
    defaults): for library callers that build one part from its section alone."""
    full = schema()
    full[section] = node
    run_validators(full)


def load_extensions() -> None:
    """Import the extension modules once (entry points ``tinlt.extensions``, then ``$TINLT_PLUGINS``)."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        found = sorted(_entry_points(), key=lambda e: (e.name != "builtin", e.name))
        if not any(ep.name == "builtin" for ep in found):  # run from a source tree without install metadata
            _import_extension(BUILTIN, "tinlt's own extension")
        for ep in found:
            _import_extension(ep.value.split(":")[0], f"entry point '{ep.name}'")
        for name in [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]:
            _import_extension(name, f"${PLUGINS_ENV}")
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def _entry_points() -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=EXTENSION_GROUP))


def _import_extension(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise TinltError(f"{where}: cannot import extension module '{module}': {e}") from None


def choices(key: str) -> tuple[str, ...]:
    """The allowed values of ``key``: config's own, then those extensions registered."""
    load_extensions()
    own = STATIC_CHOICES[key]
    extra = _choices.get(_CHOICE_ALIASES.get(key, key), [])
    return tuple(own) + tuple(n for n in extra if n not in own)


def _hints(cls: type) -> list:
    hints = typing.get_type_hints(cls)
    return [hints[f.name] for f in dataclasses.fields(cls)]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _section_base(section: str) -> type:
    return TuneConfig if section == "model.tune" else LossConfig


def _extend(base: type, extra: list[type]) -> type:
    """``base`` with the fields of each ``extra`` dataclass added (a dataclass of the same name)."""
    if not extra:
        return base
    have = {f.name for f in dataclasses.fields(base)}
    fields = []
    for cls in extra:
        for f, t in zip(dataclasses.fields(cls), _hints(cls)):
            if f.name not in have:
                have.add(f.name)
                default = ({"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING
                           else {"default": f.default})
                fields.append((f.name, t, field(**default)))
    return _dataclass(base.__name__, fields, base)


def _dataclass(name: str, fields: list, base: type) -> type:
    cls = dataclasses.make_dataclass(name, fields, bases=(base,))
    cls.__module__ = __name__  # string annotations of the base resolve in this module
    return cls


def schema_class() -> type:
    """The Config dataclass with every registered key in place (built once per registration)."""
    load_extensions()
    if _state["schema"] is None:
        tune = _extend(TuneConfig, _keys["model.tune"])
        loss = _extend(LossConfig, _keys["loss"])
        model = _dataclass("ModelConfig", [("tune_image", tune, field(default_factory=tune)),
                                            ("tune_text", tune, field(default_factory=tune))], ModelConfig)
        _state["schema"] = _dataclass("Config", [("model", model, field(default_factory=model)),
                                                 ("loss", loss, field(default_factory=loss))], Config)
    return _state["schema"]


def schema() -> DictConfig:
    """A fresh copy of the full schema at its defaults (a deep copy of one built per schema
    class: building it takes ~17 ms, copying ~3 ms, and a grid loads hundreds of configs)."""
    cls = schema_class()
    if _state.get("built_for") is not cls:
        _state["built"], _state["built_for"] = OmegaConf.structured(cls), cls
    return copy.deepcopy(_state["built"])
