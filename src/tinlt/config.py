"""Run configuration: a typed schema, layered YAML files and ``key=value`` overrides.

We use OmegaConf (the config library behind Hydra): it merges YAML layers and dotted
command-line overrides onto a dataclass schema, so an unknown key or a wrong type is
caught before any work starts. We add the one thing it lacks, a "did you mean" hint.

The schema is the vocabulary every layer speaks: this module also declares the allowed
value of every key that takes a name (``CHOICES``), and the modules that implement those
names (models, losses, data) import their lists from here. It imports nothing of tinlt
but ``errors``, so data, models and losses may depend on it and never the reverse (an
import contract in ``pyproject.toml`` checks it).

A YAML file may start with ``_base_: other.yaml`` (or a list) to inherit; paths are
relative to the file. A bare name like ``paper_vitb32`` is looked up in the bundled
``tinlt/configs`` folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

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


# Allowed values of the keys that name a method, declared once. The implementing modules
# (models/tin.py, data/transforms.py, losses.py, ...) take their lists from here.
SPLIT_KINDS = ("list", "folder", "csv", "fashion_mnist")
HEADS = ("text", "linear", "cosine")
TUNING_METHODS = ("", "full", "frozen", "lora", "adaptformer", "vpt", "bitfit", "ln", "bn", "ssf", "last_k")
LORA_TARGETS = ("q", "k", "v", "o", "mlp", "conv1x1")
CLASSIFIER_INITS = ("", "text", "class_mean", "probe", "random")
COOP_POSITIONS = ("end", "middle", "front")
TTA_MODES = ("none", "flip", "five_crop", "ten_crop")
AUGMENTS = ("paper", "none")
SAMPLERS = ("instance", "class_balanced", "sqrt")
GROUP_MODES = ("auto", "absolute", "relative")
LOSSES = ("seesaw", "ce", "focal", "cb_ce", "cb_focal", "balanced_softmax", "logit_adjust", "ldam", "contrastive")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")
AMP_MODES = ("auto", "bf16", "fp16", "off")

CHOICES = {
    "model.head": HEADS,
    "model.tune_image.method": TUNING_METHODS,
    "model.tune_text.method": TUNING_METHODS,
    "model.classifier_init": CLASSIFIER_INITS,
    "model.coop.position": COOP_POSITIONS,
    "data.tta": TTA_MODES,
    "data.augment": AUGMENTS,
    "data.sampler": SAMPLERS,
    "data.groups": GROUP_MODES,
    "loss.name": LOSSES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "optim.lr_scaling": LR_SCALINGS,
    "train.amp": AMP_MODES,
    "train.best_checkpoint": ("val", "last"),
}
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
    """How one tower trains (models/tuning/; docs/tuning.md). Empty method: model.freeze_* decide."""

    method: str = ""  # full | frozen | lora | adaptformer | vpt | bitfit | ln | bn | ssf | last_k
    blocks: int = 0  # apply the method to the last this many blocks only (last_k: how many train); 0 = all
    rank: int = 8  # lora
    alpha: float = 16.0  # lora: the update is scaled by alpha / rank
    targets: List[str] = field(default_factory=lambda: ["q", "v"])  # lora: q k v o (attention), mlp, conv1x1
    bottleneck: int = 0  # adaptformer: width; 0 = LIFT's rule 2^max(0, floor(log2(classes / (2 * blocks))))
    prompts: int = 10  # vpt: prompt tokens
    deep: bool = False  # vpt: new prompts before every block (else only before the first)


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
    name: str = "seesaw"  # seesaw | ce | focal | cb_ce | cb_focal | balanced_softmax | logit_adjust | ldam | contrastive
    contrastive_weight: float = 0.0  # text head: add this times the image-text contrastive loss to the loss above
    p: float = 0.7  # seesaw mitigation exponent: (N_j/N_i)^p for rarer negatives
    q: float = 0.0  # seesaw compensation exponent (0 = off)
    online: bool = False  # seesaw: accumulate class counts from training batches instead of the split prior
    eps: float = 1e-2  # seesaw: floor on the target probability in the compensation ratio
    label_smoothing: float = 0.0  # ce only
    gamma: float = 2.0  # focal / cb_focal focusing exponent (0 = cross-entropy)
    beta: float = 0.9999  # cb_ce / cb_focal effective-number beta in [0, 1)
    tau: float = 1.0  # logit_adjust: weight of log prior added to the logits
    max_margin: float = 0.5  # ldam: margin of the rarest class (margins ~ n^-1/4)
    s: float = 30.0  # ldam: scale on the margined logits (30 assumes cosine logits)
    drw_epoch: Optional[int] = None  # ldam: 0-based epoch from which class-balanced weights apply; null = never
    drw_beta: float = 0.9999  # ldam: beta of the deferred re-weighting


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
    valid = _all_keys(OmegaConf.structured(Config))
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
    bad = _unknown_keys(data, OmegaConf.structured(Config))
    if bad:
        at = _key_lines(where)
        valid = set(_all_keys(OmegaConf.structured(Config)))

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
    cfg = OmegaConf.structured(Config)
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
                   if _unknown_keys(_nested(ov.split("=", 1)[0].strip()), OmegaConf.structured(Config))]
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
    """TinltError unless ``value`` is an allowed value of ``key`` (see ``CHOICES``)."""
    allowed = CHOICES[key] if allowed is None else allowed
    if value not in allowed:
        raise TinltError(
            f"config key '{key}' = {value!r}; expected one of: {', '.join(allowed)}{did_you_mean(str(value), allowed)}"
        )


def validate(cfg: DictConfig) -> None:
    """Every check that needs no data: run when the config is built, before anything loads."""
    for key in CHOICES:
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
    bad = [t for t in list(cfg.model.tune_image.targets) + list(cfg.model.tune_text.targets) if t not in LORA_TARGETS]
    if bad:
        raise TinltError(f"config key 'model.tune_*.targets': {bad[0]!r}; expected some of: {', '.join(LORA_TARGETS)}")
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
        return OmegaConf.merge(OmegaConf.structured(Config), d)
    except OmegaConfBaseException as e:
        raise _explain(e, "checkpoint config") from None
