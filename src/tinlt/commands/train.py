"""``tinlt train``, ``tinlt eval`` and ``tinlt zeroshot``: a config (or a checkpoint) to a run
folder with metrics. Thin shells over the engine; torch is imported when a handler runs."""

from __future__ import annotations

import sys

from .common import add_config_args, add_quiet, add_trust_arg


def register(sub) -> dict:
    p = sub.add_parser("train", help="train TIN (or a baseline) from a config")
    add_config_args(p, required=False)
    p.add_argument("--resume", nargs="?", const="auto", default=None, help="resume from CKPT or the run's last.pt")
    p.add_argument("--fresh", "--overwrite", action="store_true",
                   help="replace the results of a run already in train.output_dir (refused without it)")
    add_trust_arg(p)

    p = sub.add_parser("eval", help="evaluate a checkpoint; writes metrics.json")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval)")
    p.add_argument("--prevalence", type=float, default=None,
                   help="two classes: the rare class's share where the model is used (precision depends on it)")
    p.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.test.path=other.txt")
    add_quiet(p)
    add_trust_arg(p)

    p = sub.add_parser("zeroshot", help="classify by prompts with frozen towers, no training")
    add_config_args(p)
    p.add_argument("--out", default=None, help="output folder (default: <train.output_dir>/zeroshot)")
    return {"train": _cmd_train, "eval": _cmd_eval, "zeroshot": _cmd_zeroshot}


def _cmd_train(a) -> int:
    from ..engine.progress import hide_bars
    from ..engine.run_folder import config_for_train
    from ..engine.trainer import train
    from ..report import training_hooks

    cfg = config_for_train(a.config, a.overrides, a.resume)
    hide_bars(a.quiet)  # -q hides bars and progress lines, never the epoch lines or the scores
    train(cfg, resume=a.resume, command=sys.argv, hooks=training_hooks(cfg), fresh=a.fresh)
    return 0


def _cmd_eval(a) -> int:
    from ..engine.progress import hide_bars

    hide_bars(a.quiet)
    if str(a.checkpoint).lower().endswith(".onnx"):  # torch-free: the split comes from data.test.* overrides
        from ..deploy.onnx_eval import evaluate_onnx
        from ..metrics import scores_line

        m = evaluate_onnx(a.checkpoint, a.overrides, out_dir=a.out, prevalence=a.prevalence)
        print(f"eval: {scores_line(m)} | wrote {', '.join(m['files'])}"
              + (f" | {len(m['unreadable'])} unreadable file(s) skipped" if m["unreadable"] else ""))
        return 0
    from ..engine.inference import evaluate_checkpoint

    evaluate_checkpoint(a.checkpoint, a.overrides, out_dir=a.out, prevalence=a.prevalence)
    return 0


def _cmd_zeroshot(a) -> int:
    from ..config import load_config
    from ..engine.inference import zeroshot
    from ..engine.progress import hide_bars

    cfg = load_config(a.config, a.overrides)
    hide_bars(a.quiet)
    zeroshot(cfg, out_dir=a.out)
    return 0
