"""A tuning method, a tower, a head and a loss, each added as one module outside tinlt.

The module below lives in a temporary folder and is named in ``$TINLT_PLUGINS``; no tinlt
file is edited. ``tinlt train`` then takes the new names and keys from the command line,
validates them like its own (did-you-mean included), and trains a step with each; the
checkpoint shows the new parts and that they moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import split_args

PLUGIN = '''
"""A throw-away extension: a tower, a tuning method, a head and a loss."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tinlt.losses.base import BaseLoss, check_inputs
from tinlt.losses.registry import register_loss
from tinlt.models.base import ImageTower, TuningParts
from tinlt.models.blocks import CONV
from tinlt.models.heads import Head, register_head
from tinlt.models.registry import register_towers
from tinlt.models.tuning.registry import register_method


class TinyConvTower(ImageTower):
    """Three conv blocks, mean pool, projection."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                                    for c in (3, 8, 8))
        self.proj = nn.Linear(8, 16)
        self.feature_channels, self.output_dim, self.image_size = 8, 16, 32
        self.image_mean, self.image_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def forward_features(self, x):
        for b in self.blocks:
            x = b(x)
        return x

    def forward_head(self, fmap):
        return self.proj(fmap.mean(dim=(2, 3)))

    def tuning_parts(self):
        return TuningParts(CONV, list(self.blocks), [self.proj])


register_towers("tiny-conv", lambda cfg, image_size=None: (TinyConvTower(), None))


@dataclass
class GainKeys:
    gain_init: float = 1.0  # out_gain: the starting gain


class Gain(nn.Module):
    def __init__(self, channels, init):
        super().__init__()
        self.gain = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x):
        return x * self.gain.view(1, -1, 1, 1)


@register_method("out_gain", keys=GainKeys, needs="conv")
def out_gain(ctx):
    params = []
    for block in ctx.blocks:
        gain = Gain(block[0].out_channels, ctx.get("gain_init", 1.0))
        block.add_module("out_gain", gain)  # the block is a Sequential: the gain runs last
        params += list(gain.parameters())
    return params


@register_head("scaled_linear")
class ScaledLinear(Head):
    def __init__(self, in_features, out_features, scale=25.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * 0.1)
        self.temperature = nn.Parameter(torch.tensor(2.0))

    def forward(self, image, rows=None):
        return self.temperature * F.linear(image, self.weight)


@dataclass
class SquaredKeys:
    margin: float = 0.0  # squared: added to the true class's logit before the softmax


@register_loss("squared", keys=SquaredKeys)
def _build(cfg, counts):
    class Squared(BaseLoss):
        def forward(self, logits, targets):
            logits, targets = check_inputs(logits, targets, len(counts))
            return F.cross_entropy(logits, targets) ** 2 + cfg.margin * 0
    return Squared()
'''


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TINLT_PLUGINS="throwaway_ext", PYTHONPATH=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "tinlt", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_tower_method_head_and_loss_from_one_outside_module_train_a_step(dataset, tmp_path):
    (tmp_path / "throwaway_ext.py").write_text(PLUGIN)
    out = tmp_path / "run"
    args = ["train", "model.name=tiny-conv", "model.head=scaled_linear", "model.visual_attention=false",
            "model.tune_image.method=out_gain", "model.tune_image.gain_init=0.5", "loss.name=squared",
            "loss.margin=0.1", "data.image_size=32", "data.num_workers=0", "optim.batch_size=8",
            "optim.name=adamw", "optim.lr=0.05", "optim.epochs=1", "train.max_steps=1", "train.quiet=true",
            "train.report=false", f"train.output_dir={out}", *split_args("folder", dataset)]
    res = _run(tmp_path, *args)
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert cfg["model"]["tune_image"]["gain_init"] == 0.5 and cfg["loss"]["margin"] == 0.1
    state = torch.load(out / "last.pt", weights_only=True)["model"]
    gains = [k for k in state if k.endswith("out_gain.gain")]
    assert len(gains) == 3  # one per block: the method found the tower's blocks
    assert all(not torch.allclose(state[k], torch.full_like(state[k], 0.5)) for k in gains)  # and they trained
    assert "head.temperature" in state and state["head.temperature"].item() != 2.0
    assert "image_tower.blocks.0.0.weight" in state  # the tower's own weights are saved with it
    # the new names and keys are checked like tinlt's own
    res = _run(tmp_path, *[a.replace("out_gain", "out_gian") for a in args])
    assert res.returncode == 2 and "did you mean 'out_gain'" in res.stderr and "Traceback" not in res.stderr
    res = _run(tmp_path, *[a.replace("gain_init=0.5", "gain_int=0.5") for a in args])
    assert res.returncode == 2 and "gain_init" in res.stderr and "Traceback" not in res.stderr
    # without the extension the names are unknown, in one line
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("TINLT_PLUGINS", None)
    res = subprocess.run([sys.executable, "-m", "tinlt", *args], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_a_missing_extension_module_is_one_line(tmp_path):
    env = dict(os.environ, TINLT_PLUGINS="no_such_extension_module")
    res = subprocess.run([sys.executable, "-m", "tinlt", "train", "train.output_dir=" + str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "no_such_extension_module" in res.stderr and "Traceback" not in res.stderr


def test_tinlts_own_extension_loads_without_install_metadata():
    """Run from a source tree (PYTHONPATH=src, no entry points installed): the built-in towers,
    methods, heads and losses still register."""
    code = ("import tinlt.schema as s; s._entry_points = lambda: []  # what a source tree offers\n"
            "from tinlt.config import load_config, choices\n"
            "cfg = load_config(None, ['model.tune_image.method=lora', 'model.tune_image.rank=4', 'loss.name=focal'])\n"
            "print(cfg.model.tune_image.rank, 'lora' in choices('model.tune_image.method'), choices('model.head'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]
    assert res.stdout.split()[:2] == ["4", "True"] and "text" in res.stdout
