"""Held-out MAPE of MoLE-RD estimator variants (loss, detector, fallback) on a pipeline's own data.

    python benchmarks/compare_estimators.py [--root PROJECT] [--params params.yaml] [--target beta|alpha]

Reads the labelled and rebalanced tables a ``dvc repro`` left under PROJECT/data/processed and fits, per
(hardware, model, tp) scope, the candidate exactly as the train stage does (``pipeline._fit_target``) with
one ``train.estimator`` knob changed at a time; prints the held-out MAPE over all scopes (row-weighted), per
variant. This is how the defaults in params.yaml were chosen.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

from molerd import pipeline

VARIANTS = {
    "default": {},
    "loss=mape": {"loss": "mape"},
    "loss=log": {"loss": "log"},
    "detector=learned": {"detector": "learned"},
    "detector=classifier": {"detector": "classifier"},
    "detector=learned, fallback=shrink": {"detector": "learned", "fallback": "shrink"},
    "gate_width=0 (hard)": {"gate_width": 0.0},
}


def heldout_mape(params: dict, layout: pipeline.Layout, target: str) -> float:
    """Row-weighted held-out MAPE (percent) of the candidate over every scope of every hardware."""
    name = pipeline.TABLE_OF[target]
    kind = pipeline.alpha_kinds(params)[0] if target == "alpha" else ""
    total, rows = 0.0, 0
    for hw in params["base"]["hardware"]:
        tr = pipeline._read_table(layout.balanced, f"{name}_train", hw)
        te = pipeline._read_table(layout.labelled, name, hw)
        te = te[te["split"] == "test"]
        for scope in pipeline._scopes(tr):
            _, _, _, info = pipeline._fit_target(params, target, pipeline._in_scope(tr, scope),
                                                 pipeline._in_scope(te, scope), kind, False)
            s = info.get("test", {}).get("candidate")
            if s and s["n"]:
                total += s["mape"] * s["n"]
                rows += s["n"]
    return 100.0 * total / rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--params", type=Path, default=None, help="default: ROOT/params.yaml")
    ap.add_argument("--target", choices=pipeline.TARGETS, action="append")
    args = ap.parse_args()
    base = pipeline.load_params(args.params or args.root / "params.yaml")
    layout = pipeline.Layout(args.root)
    warnings.simplefilter("ignore")  # thin-regime fallbacks warn once per fit; the train report lists them
    for target in args.target or pipeline.TARGETS:
        print(f"{target}: held-out MAPE (%), APE floor {pipeline.floor_for(base, target):g} us")
        for label, change in VARIANTS.items():
            params = copy.deepcopy(base)
            params["train"]["estimator"].update(change)
            print(f"  {label:<36s} {heldout_mape(params, layout, target):8.2f}")


if __name__ == "__main__":
    main()
