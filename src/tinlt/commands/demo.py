"""``tinlt demo``: TIN's best recipe vs the benchmark's strongest baseline, offline (tinlt.demo)."""

from __future__ import annotations


def register(sub) -> dict:
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
    return {"demo": _cmd_demo}


def _cmd_demo(a) -> int:
    from ..demo import run_demo

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
