"""Training hooks: how apps (reports, TensorBoard figures, benchmarks) attach to ``train()``.

The engine imports no app. A hook is any object with some of these methods, each called
on the main process with the run's :class:`TrainContext`:

* ``on_start(ctx)``: the run folder holds config.yaml and run.json; nothing trained yet;
* ``on_epoch_start(ctx)``: just before the epoch's first batch is requested;
* ``on_epoch_end(ctx)``: after the epoch's training pass, its evaluation and its
  checkpoint; ``ctx.record`` is the epoch's log.jsonl record;
* ``on_finish(ctx)``: after the final test evaluation; ``ctx.metrics`` is metrics.json.

A hook that raises stops training, except in ``on_finish``, where the run's results are
already on disk: there a failure is reported as a warning and the run still succeeds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

HOOK_METHODS = ("on_start", "on_epoch_start", "on_epoch_end", "on_finish")


@dataclass
class TrainContext:
    cfg: Any
    run: Any  # engine.run_folder.RunFolder
    logger: Any  # engine.loggers.RunLogger
    features: Any = None  # engine.feature_cache.FeatureStore, when train.feature_cache is used
    epoch: int = 0
    global_step: int = 0
    record: Optional[dict] = None
    metrics: Optional[dict] = None
    extra: dict = field(default_factory=dict)


def call_hooks(hooks: Sequence[Any], event: str, ctx: TrainContext) -> None:
    for hook in hooks:
        fn = getattr(hook, event, None)
        if fn is None:
            continue
        if event != "on_finish":
            fn(ctx)
            continue
        try:  # figures and pages for people: a failure here must never lose the run
            fn(ctx)
        except Exception as e:  # noqa: BLE001
            print(f"tinlt: warning: {type(hook).__name__}.on_finish failed ({type(e).__name__}: {e})",
                  file=sys.stderr)
