"""Run configuration: a typed schema, layered YAML files and ``key=value`` overrides.

We use OmegaConf (the config library behind Hydra): it merges YAML layers and dotted
command-line overrides onto a dataclass schema, so an unknown key or a wrong type is
caught before any work starts. We add the one thing it lacks, a "did you mean" hint.

The schema is the vocabulary every layer speaks (:mod:`tinlt.schema`: the dataclasses, the
allowed value of every key that takes a name, and the registry through which extensions add
names and keys; re-exported here). This module imports nothing of tinlt but ``errors`` and
``schema``, so data, models and losses may depend on it and never the reverse (an import
contract in ``pyproject.toml`` checks it).

A YAML file may start with ``_base_: other.yaml`` (or a list) to inherit; paths are
relative to the file. A bare name like ``paper_vitb32`` is looked up in the bundled
``tinlt/configs`` folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import TinltError, close_matches, did_you_mean
from .schema import (  # noqa: F401 - re-exported: the vocabulary every layer speaks
    AMP_MODES, AUGMENTS, CLASSIFIER_INITS, COOP_POSITIONS, EXTENSION_GROUP, GROUP_MODES, KEY_SECTIONS, LR_SCALINGS,
    OPTIMIZERS, PLUGINS_ENV, SAMPLERS, SCHEDULES, SPLIT_KEYS, SPLIT_KINDS, STATIC_CHOICES, TTA_MODES, Config,
    CoopConfig, DataConfig, LossConfig, ModelConfig, OptimConfig, SplitConfig, TrainConfig, TuneConfig, check_section,
    choices, load_extensions, register_choice, register_keys, register_validator, run_validators, schema,
    schema_class)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LISTS_DIR = Path(__file__).resolve().parent / "data" / "lists"

# ${tinlt_lists:Places_LT/classnames.txt} -> the list files bundled with the package
if not OmegaConf.has_resolver("tinlt_lists"):
    _register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver  # 2.4 renamed it
    _register("tinlt_lists", lambda rel: str(LISTS_DIR / rel))


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
    for key in STATIC_CHOICES:
        check_choice(key, OmegaConf.select(cfg, key))
    for key in SPLIT_KEYS:
        kind = str(OmegaConf.select(cfg, f"{key}.kind") or "")
        if kind:
            check_choice(f"{key}.kind", kind, SPLIT_KINDS + (("holdout", "kfold") if key == "data.val" else ()))
    solved = cfg.model.classifier_init == "logistic"  # the head is solved at set-up: 0 epochs allowed
    if cfg.optim.epochs < (0 if solved else 1) and cfg.train.max_steps < 1:
        raise TinltError("config key 'optim.epochs' must be >= 0" if solved else
                         "config key 'optim.epochs' must be >= 1 (0 only with model.classifier_init=logistic, "
                         "a head solved at set-up)")
    if not 0 < cfg.optim.lr < 3.4e38:  # beyond float32 the optimizer itself fails
        raise TinltError(f"config key 'optim.lr' = {cfg.optim.lr}; expected a positive learning rate below 3.4e38")
    if cfg.optim.batch_size < 1:
        raise TinltError("config key 'optim.batch_size' must be >= 1")
    if cfg.data.few_threshold > cfg.data.many_threshold + 1:
        raise TinltError("config keys 'data.few_threshold' must be <= 'data.many_threshold' + 1")
    _validate_classifier_options(cfg)
    run_validators(cfg)


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
