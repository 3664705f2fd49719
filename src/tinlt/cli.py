"""The ``tinlt`` command: parses arguments, builds a config, calls library functions.

Every subcommand is a thin shell over a function that is equally usable from Python.
User errors print as one line and exit with status 2: ``TinltError`` (bad input, config,
file) and ``OSError`` (what the operating system says about the user's files and disks:
no space, permission, read-only, missing). Any other exception is a bug in tinlt and keeps
its traceback. A run stopped by SIGINT/SIGTERM saves a resumable checkpoint and exits with
128 + the signal number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .errors import Interrupted, TinltError


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML file or bundled config name (e.g. paper_imagenet_lt)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 loss.p=0.8")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints with full unpickling (files from tinlt < 0.2); only for files you trust")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="tinlt", description="TIN: long-tailed recognition with vision-language models")
    ap.add_argument("--version", action="version", version=f"tinlt {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train TIN (or a baseline) from a config")
    _add_config_args(p, required=False)
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
    p.add_argument("--quiet", "-q", action="store_true")
    add_trust_arg(p)

    p = sub.add_parser("zeroshot", help="classify by prompts with frozen towers, no training")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="output folder (default: <train.output_dir>/zeroshot)")

    p = sub.add_parser("predict", help="top-k classes for images or folders (checkpoint, or ONNX without torch)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a tinlt checkpoint (needs torch)")
    src.add_argument("--model", help="an ONNX file from 'tinlt export' (numpy + onnxruntime only)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="preds.csv or preds.json (default: table to the terminal)")
    p.add_argument("--sort-by", default=None, metavar="CLASS",
                   help="rank the images by this class's probability, highest first (e.g. --sort-by rusty)")
    add_trust_arg(p)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="SUBCOMMAND")
    q = dsub.add_parser("inspect", help="class counts, imbalance and shot groups of a training split")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-list", help="list file of 'relative/path label' lines")
    src.add_argument("--train-csv", help="CSV with path,label or path,class_name")
    src.add_argument("--train-folder", help="image-folder tree (class = sub-folder)")
    q.add_argument("--classnames", default=None)
    q.add_argument("--many", type=int, default=100, help="many: count > MANY")
    q.add_argument("--few", type=int, default=20, help="few: count < FEW")
    q.add_argument("--groups", default="auto", choices=["auto", "absolute", "relative"])
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--full", action="store_true", help="decode every image (default: the fast header check)")
    q.add_argument("--no-check", action="store_true", help="count listed files without opening them")

    p = sub.add_parser("demo", help="offline demo: TIN's best recipe vs the benchmark's strongest baseline "
                       "on Fashion-MNIST-LT")
    p.add_argument("--variant", default="fmnist_lt", choices=["fmnist_lt", "fmnist_clamp", "both"])
    p.add_argument("--no-baseline", action="store_true", help="train TIN only")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default=None, help="folder with the four Fashion-MNIST IDX files")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--fresh", action="store_true",
                   help="retrain even when a finished run with the same config exists (after an upgrade)")

    from .commands import register_all

    PLUGIN_COMMANDS.update(register_all(sub))
    return ap


def _cmd_train(a) -> int:
    from .engine.run_folder import config_for_train
    from .engine.trainer import train
    from .report import training_hooks

    cfg = config_for_train(a.config, a.overrides, a.resume)
    if a.quiet:
        cfg.train.quiet = True
    train(cfg, resume=a.resume, command=sys.argv, hooks=training_hooks(cfg), fresh=a.fresh)
    return 0


def _cmd_eval(a) -> int:
    from .engine.inference import evaluate_checkpoint

    evaluate_checkpoint(a.checkpoint, a.overrides, out_dir=a.out, quiet=a.quiet, prevalence=a.prevalence)
    return 0


def _cmd_zeroshot(a) -> int:
    from .config import load_config
    from .engine.inference import zeroshot

    cfg = load_config(a.config, a.overrides)
    zeroshot(cfg, out_dir=a.out, quiet=a.quiet)
    return 0


def _cmd_predict(a) -> int:
    # onnx_predict is torch-free: the --model path must never import torch
    from .deploy.onnx_predict import OnnxClassifier
    from .deploy.types import format_predictions, sort_rows, write_predictions

    if a.topk < 1 or a.batch_size < 1:
        raise TinltError("--topk and --batch-size must be >= 1")
    if a.out and not a.out.lower().endswith((".csv", ".json")):
        raise TinltError(f"--out must end in .csv or .json, got {a.out}")
    if a.model:
        rows = OnnxClassifier(a.model).predict(a.inputs, topk=a.topk, batch_size=a.batch_size)
    else:
        from .deploy.predict import predict_paths

        rows = predict_paths(a.checkpoint, a.inputs, topk=a.topk, batch_size=a.batch_size)
    if a.sort_by:
        rows = sort_rows(rows, a.sort_by)
    decided = next((r["prediction"] for r in rows if "prediction" in r), None)
    note = ""
    if decided:
        pos = decided["positive"]
        note = f"decision threshold applied: '{pos}' when P({pos}) >= {decided['threshold']:.6g}, not argmax"
    if a.out:
        print(f"wrote {write_predictions(rows, a.out)} ({len(rows)} images)" + (f"; {note}" if note else ""))
    else:
        print((f"# {note}\n" if note else "") + format_predictions(rows))
    return 0


def _cmd_data(a) -> int:
    import numpy as np

    from .data import inspect as data_inspect
    from .data.sources import load_csv, load_folder, load_list

    if a.train_list:
        samples = load_list(a.train_list, classnames_file=a.classnames)
    elif a.train_csv:
        samples = load_csv(a.train_csv, classnames_file=a.classnames)
    else:
        samples = load_folder(a.train_folder, classnames=a.classnames)
    bad = [] if a.no_check else data_inspect.check_decodable(samples, full=a.full)
    if bad:  # unusable files are not images: count what training would use
        keep = np.ones(len(samples), dtype=bool)
        drop = {f for f, _ in bad}
        keep[[i for i, p in enumerate(samples.items) if str(p) in drop]] = False
        samples = samples.subset(np.flatnonzero(keep))
    summary = data_inspect.summarize(samples, many_threshold=a.many, few_threshold=a.few, mode=a.groups)
    summary["unreadable"] = [{"file": f, "reason": r} for f, r in bad]
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(data_inspect.format_summary(summary, samples.class_counts()))
    return 0


def _cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(
        variant=a.variant,
        baseline=not a.no_baseline,
        out=a.out,
        data=a.data,
        overrides=a.overrides,
        quiet=a.quiet,
        fresh=a.fresh,
    )
    return 0


PLUGIN_COMMANDS: dict = {}  # filled by tinlt.commands modules when the parser is built

COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "zeroshot": _cmd_zeroshot,
    "predict": _cmd_predict,
    "data": _cmd_data,
    "demo": _cmd_demo,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .runtime import tune_allocator

    tune_allocator()
    args = build_parser().parse_args(argv)
    trust = getattr(args, "trust_checkpoint", False)
    try:
        if trust:
            from .engine.checkpoint import trust_pickled_checkpoints

            trust_pickled_checkpoints(True)
        handler = COMMANDS.get(args.cmd) or PLUGIN_COMMANDS[args.cmd]
        return handler(args)
    except TinltError as e:
        print(f"tinlt: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tinlt models | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush does not fail again
        return 0
    except OSError as e:  # the user's files and disks; a bug would be another exception type
        where = f"{e.filename}: " if e.filename else ""
        print(f"tinlt: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinlt: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"tinlt: {e}; continue with: tinlt train --resume {e.path}", file=sys.stderr)
        return 128 + e.signum
    finally:
        if trust:  # for this command only
            from .engine.checkpoint import trust_pickled_checkpoints

            trust_pickled_checkpoints(False)

if __name__ == "__main__":
    raise SystemExit(main())
