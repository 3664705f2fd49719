"""Run configuration: a typed schema, layered YAML files and ``key=value`` overrides.

We use OmegaConf (the config library behind Hydra): it merges YAML layers and dotted
command-line overrides onto a dataclass schema, so an unknown key or a wrong type is
caught before any work starts. We add the one thing it lacks, a "did you mean" hint.

The schema is the vocabulary every layer speaks: this module also declares the allowed
value of every key that takes a name (:func:`choices`), and the modules that implement those
names (models, losses, data) import their lists from here. It imports nothing of tinlt
but ``errors``, so data, models and losses may depend on it and never the reverse (an
import contract in ``pyproject.toml`` checks it).

A YAML file may start with ``_base_: other.yaml`` (or a list) to inherit; paths are
relative to the file. A bare name like ``paper_vitb32`` is looked up in the bundled
``tinlt/configs`` folder.

Extensions: names and keys whose meaning lives with their implementation (tuning methods
and their keys, heads, losses and their keys) are registered by the implementing module
(:func:`register_choice`, :func:`register_keys`), so adding one is one new module. Config
learns them from the modules listed under the entry-point group ``tinlt.extensions``
(tinlt's own, ``tinlt.models.builtin``, is the first) and in ``$TINLT_PLUGINS``
(comma-separated module names), imported once before the first schema is built. This
module never names them.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import TinltError, close_matches, did_you_mean

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LISTS_DIR = Path(__file__).resolve().parent / "data" / "lists"

# ${tinlt_lists:Places_LT/classnames.txt} -> the list files bundled with the package
if not OmegaConf.has_resolver("tinlt_lists"):
    _register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver  # 2.4 renamed it
    _register("tinlt_lists", lambda rel: str(LISTS_DIR / rel))


# Allowed values of the keys that name a method, declared once. Keys whose values are
# registered by extensions (tuning methods, heads, losses) start with the values that are
# config's own ("" = unset) and grow as extensions register (see the module doc).
SPLIT_KINDS = ("list", "folder", "csv", "fashion_mnist")
CLASSIFIER_INITS = ("", "text", "class_mean", "probe", "random")
COOP_POSITIONS = ("end", "middle", "front")
TTA_MODES = ("none", "flip", "five_crop", "ten_crop")
AUGMENTS = ("paper", "none")
SAMPLERS = ("instance", "class_balanced", "sqrt")
GROUP_MODES = ("auto", "absolute", "relative")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")
AMP_MODES = ("auto", "bf16", "fp16", "off")

_STATIC_CHOICES = {
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

    kind: str = ""  # list | folder | csv | fashion_mnist; data.val also: holdout (from data.train)
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
    seed: int = -1  # data.val.kind=holdout: the split's seed; -1 = train.seed


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
    tune_image: TuneConfig = field(default_factory=TuneConfig)
    tune_text: TuneConfig = field(default_factory=TuneConfig)
    coop: CoopConfig = field(default_factory=CoopConfig)
    templates: List[str] = field(default_factory=lambda: ["a photo of a {}."])
    freeze_image: bool = False
    freeze_text: bool = False
    truncate_text: bool = True
    text_buckets: int = 4  # with truncate_text: encode prompts in <= this many length groups (1 = one group)
    embed_dim: int = 256  # shared space of the offline towers' projections
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
    channels_last: bool = True  # CUDA only: channels-last memory for convolutional image towers
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


def check_section(section: str, node: Any) -> None:
    """Run the registered validators on ``node`` as config section ``section`` (the rest at
    defaults): for library callers that build one part from its section alone."""
    full = schema()
    full[section] = node
    for check in _validators:
        check(full)


def load_extensions() -> None:
    """Import the extension modules once (entry points ``tinlt.extensions``, then ``$TINLT_PLUGINS``)."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        from importlib.metadata import entry_points

        for ep in sorted(entry_points(group=EXTENSION_GROUP), key=lambda e: (e.name != "builtin", e.name)):
            _import_extension(ep.value.split(":")[0], f"entry point '{ep.name}'")
        for name in [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]:
            _import_extension(name, f"${PLUGINS_ENV}")
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def _import_extension(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise TinltError(f"{where}: cannot import extension module '{module}': {e}") from None


def choices(key: str) -> tuple[str, ...]:
    """The allowed values of ``key``: config's own, then those extensions registered."""
    load_extensions()
    own = _STATIC_CHOICES[key]
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
    """A fresh copy of the full schema at its defaults."""
    return OmegaConf.structured(schema_class())


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node[k], full + "."))
    return keys


# what people type for a key, and the key they mean (checked before spelling matches)
SYNONYMS = {"learning_rate": "lr", "lr_rate": "lr", "base_lr": "lr", "num_epochs": "epochs", "n_epochs": "epochs",
            "max_epochs": "epochs", "bs": "batch_size", "batchsize": "batch_size", "wd": "weight_decay",
            "img_size": "image_size", "resolution": "image_size", "size": "image_size", "workers": "num_workers",
            "out_dir": "output_dir", "output": "output_dir", "backbone": "name", "arch": "name", "optimizer": "name"}


def _hint(bad_key: str) -> str:
    """The key meant: a synonym (learning_rate -> lr), a leaf in its own section, then the
    same leaf in another section (train.epochs -> optim.epochs), then the closest full key."""
    valid = _all_keys(schema())
    section, _, leaf = bad_key.rpartition(".")
    leaf = SYNONYMS.get(leaf, leaf)
    by_section: dict[str, list[str]] = {}
    for k in valid:
        by_section.setdefault(k.rpartition(".")[0], []).append(k)
    own = {k.rpartition(".")[2]: k for k in by_section.get(section, [])}
    others = {}
    for k in valid:
        others.setdefault(k.rpartition(".")[2], k)
    close = ([own[leaf]] if leaf in own else [own[m] for m in close_matches(leaf, own, cutoff=0.75)]
             or ([others[leaf]] if leaf in others else [others[m] for m in close_matches(leaf, others, cutoff=0.75)])
             or close_matches(bad_key, valid))
    return f"; did you mean '{close[0]}'?" if close else ""


def _explain(exc: OmegaConfBaseException, where: str) -> TinltError:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        m = re.search(r"Key '([^']+)'", msg)
        leaf = m.group(1) if m else key
        full = key if key else leaf
        return TinltError(f"{where}: unknown config key '{full}'{_hint(full)}")
    if isinstance(exc, ValidationError):
        return TinltError(f"{where}: bad value for '{key}': {msg}")
    return TinltError(f"{where}: {msg}")


def bundled_configs() -> list[str]:
    """Names of the configs that ship with tinlt (``-c NAME``), grids included."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def _nested(dotted: str) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = None
    return out


def resolve_config_path(name: str | Path) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    names = [n for n in bundled_configs() if not n.startswith("grids/")]
    raise TinltError(f"config file not found: {name}{did_you_mean(str(name), bundled_configs(), n=2)} "
                     f"(bundled: {', '.join(names)})")


def _unknown_keys(data: Any, schema: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``data`` that the schema does not have (all of them, not just the first)."""
    out = []
    if not isinstance(data, dict):
        return out
    for k, v in data.items():
        full = f"{prefix}{k}"
        if not isinstance(schema, DictConfig) or k not in schema:
            out.append(full)
        elif isinstance(v, dict) and isinstance(schema[k], DictConfig):
            out += _unknown_keys(v, schema[k], full + ".")
    return out


def _key_lines(path: Path) -> dict[str, int]:
    """1-based line of every (dotted) key in a YAML file."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                full = f"{prefix}{k.value}"
                lines[full] = k.start_mark.line + 1
                walk(v, full + ".")

    try:
        walk(yaml.compose(path.read_text()), "")
    except (yaml.YAMLError, OSError):
        pass
    return lines


def _check_keys(data: dict, where: Path) -> None:
    """Every unknown key of one YAML layer in one message, each with its line and a hint."""
    bad = _unknown_keys(data, schema())
    if bad:
        at = _key_lines(where)
        valid = set(_all_keys(schema()))

        def why(k: str) -> str:
            if k in valid:  # "model.name: x" in YAML is one key with dots in it, not model -> name
                head, _, leaf = k.partition(".")
                return f", a dotted key: nest it ({head}: {{{leaf}: ...}})"
            return _hint(k).replace("; did you mean", ", did you mean")

        listed = "; ".join(f"'{k}' (line {at.get(k, '?')}){why(k)}" for k in bad)
        raise TinltError(f"{where}: unknown config key{'s' if len(bad) > 1 else ''} {listed}")


def _read_yaml_layers(path: Path, seen: tuple = ()) -> list[tuple[Path, dict]]:
    path = path.resolve()
    if path in seen:
        raise TinltError(f"{path}: _base_ cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).replace("\n", " ")
        raise TinltError(f"{path}: not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise TinltError(f"{path}: top level must be a mapping of keys")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    layers: list[tuple[Path, dict]] = []
    for b in bases:
        bp = (path.parent / b) if not Path(b).is_absolute() else Path(b)
        if not bp.is_file():
            bp = resolve_config_path(b)
        layers.extend(_read_yaml_layers(bp, seen + (path,)))
    layers.append((path, data))
    return layers


def load_config(path: str | Path | None = None, overrides: Optional[list[str]] = None) -> DictConfig:
    """Schema defaults <- YAML layers (bases first) <- ``key=value`` overrides."""
    cfg = schema()
    if path is not None:
        for layer_path, data in _read_yaml_layers(resolve_config_path(path)):
            _check_keys(data, layer_path)
            try:
                cfg = OmegaConf.merge(cfg, data)
            except OmegaConfBaseException as e:
                raise _explain(e, str(layer_path)) from None
    if overrides:
        for ov in overrides:
            if "=" not in ov:
                raise TinltError(f"override '{ov}' is not of the form key=value")
        unknown = [ov.split("=", 1)[0].strip() for ov in overrides
                   if _unknown_keys(_nested(ov.split("=", 1)[0].strip()), schema())]
        if len(unknown) > 1:  # all at once; a single one gets OmegaConf's message below
            raise TinltError("command line: unknown config keys " + "; ".join(f"'{k}'{_hint(k)}".replace(
                "; did you mean", ", did you mean") for k in unknown))
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise _explain(e, "command line") from None
    validate(cfg)
    return cfg


def check_choice(key: str, value: Any, allowed: tuple[str, ...] | None = None) -> None:
    """TinltError unless ``value`` is an allowed value of ``key`` (see :func:`choices`)."""
    allowed = choices(key) if allowed is None else allowed
    if value not in allowed:
        raise TinltError(
            f"config key '{key}' = {value!r}; expected one of: {', '.join(allowed)}{did_you_mean(str(value), allowed)}"
        )


def validate(cfg: DictConfig) -> None:
    """Every check that needs no data: run when the config is built, before anything loads."""
    for key in _STATIC_CHOICES:
        check_choice(key, OmegaConf.select(cfg, key))
    for key in SPLIT_KEYS:
        kind = str(OmegaConf.select(cfg, f"{key}.kind") or "")
        if kind:
            check_choice(f"{key}.kind", kind, SPLIT_KINDS + (("holdout",) if key == "data.val" else ()))
    if cfg.optim.epochs < 1 and cfg.train.max_steps < 1:
        raise TinltError("config key 'optim.epochs' must be >= 1")
    if not 0 < cfg.optim.lr < 3.4e38:  # beyond float32 the optimizer itself fails
        raise TinltError(f"config key 'optim.lr' = {cfg.optim.lr}; expected a positive learning rate below 3.4e38")
    if cfg.optim.batch_size < 1:
        raise TinltError("config key 'optim.batch_size' must be >= 1")
    if cfg.data.few_threshold > cfg.data.many_threshold + 1:
        raise TinltError("config keys 'data.few_threshold' must be <= 'data.many_threshold' + 1")
    _validate_classifier_options(cfg)
    for check in _validators:
        check(cfg)


def _validate_classifier_options(cfg: DictConfig) -> None:
    """Options that only make sense for one head type (models/adjust.py, engine/prepare.py, losses.ContrastiveLoss)."""
    head = cfg.model.head
    if cfg.train.tau_norm is not None and head != "linear":
        raise TinltError(
            "config key 'train.tau_norm' needs model.head=linear: the text head's classifier rows are "
            "L2-normalised text features already, so tau-normalisation would change nothing"
        )
    if cfg.model.reinit_head and head == "text":
        raise TinltError("config key 'model.reinit_head' needs model.head=linear or cosine (the text head has no "
                         "weights of its own)")
    if cfg.model.classifier_init and head == "text":
        raise TinltError("config key 'model.classifier_init' needs model.head=linear or cosine; the text head's "
                         "rows are its prompts' features")
    if cfg.model.coop.n_ctx and head != "text":
        raise TinltError("config key 'model.coop.n_ctx' (learnable prompts) needs model.head=text")
    for key in ("image", "text"):
        if cfg.model[f"tune_{key}"].method and cfg.model[f"freeze_{key}"]:
            raise TinltError(f"config keys 'model.freeze_{key}' and 'model.tune_{key}.method' both say how the "
                             f"{key} tower trains; use model.tune_{key}.method=frozen alone")
    if cfg.model.tune_text.method and head != "text":
        raise TinltError(f"config key 'model.tune_text.method' = {cfg.model.tune_text.method!r}, but model.head="
                         f"{head} has no text tower to tune")
    uses_contrastive = cfg.loss.name == "contrastive" or cfg.loss.contrastive_weight != 0
    if uses_contrastive and head != "text":
        raise TinltError("the contrastive loss (loss.name=contrastive or loss.contrastive_weight) needs model.head=text")
    if cfg.loss.contrastive_weight < 0:
        raise TinltError(f"config key 'loss.contrastive_weight' must be >= 0, got {cfg.loss.contrastive_weight}")
    if cfg.loss.name == "contrastive" and cfg.loss.contrastive_weight != 0:
        raise TinltError(
            "config key 'loss.contrastive_weight' adds the contrastive term to another loss; "
            "with loss.name=contrastive leave it at 0"
        )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(d: dict) -> DictConfig:
    """Rebuild a config saved in a checkpoint (schema-checked, so old keys fail loudly)."""
    try:
        return OmegaConf.merge(schema(), d)
    except OmegaConfBaseException as e:
        raise _explain(e, "checkpoint config") from None
