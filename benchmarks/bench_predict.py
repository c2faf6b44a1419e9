"""Reference predictor speed: ``molerd.release`` ``ModelSpec.predict`` on a release built from a fitted estimator.

A ``MoLERegressor`` (beta, H100 / llama-3.1-8b-instruct / tp1) is fitted on generated steps (the generator of
``bench_train.py``), turned into a release with ``build_scope``/``build_release`` and loaded back from JSON
with ``Release`` (what BLIS-side consumers do). Then:

* throughput: ``ModelSpec.predict`` vectorised over 1,000,000 rows given as a dict of float64 column arrays
  (also as a DataFrame), best and median of ``--repeats`` runs, in rows/s (target >= 2M rows/s);
* latency: one row (a dict of scalars) per call, median / p90 µs over ``--calls`` calls, with and without
  simulator state (state-free uses the release's ``state_free.assume``).

    python benchmarks/bench_predict.py [--rows 1000000] [--calls 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_steps  # noqa: E402

from molerd import features as F  # noqa: E402
from molerd.mixture import MoLERegressor  # noqa: E402
from molerd.release import Release, build_release, build_scope  # noqa: E402

TARGET_ROWS_S = 2_000_000
SCOPE = ("H100", "llama-3.1-8b-instruct", 1)


def fitted_release(n_train: int, seed: int) -> Release:
    X, y = make_steps(n_train, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MoLERegressor().fit(X, y)
    doc = build_release("bench-0", [build_scope(*SCOPE, beta=m)])
    return Release(json.loads(json.dumps(doc)), "bench release.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rel = fitted_release(a.train_rows, a.seed)
    spec = rel.model("beta", SCOPE)
    X, _ = make_steps(a.rows, a.seed + 1)
    cols = {c: X[c].to_numpy(dtype="float64") for c in F.RAW_INPUTS["beta"] if c in X.columns}
    frame = X[list(cols)]
    print(f"reference predictor ModelSpec.predict (beta, {'/'.join(map(str, SCOPE))}, "
          f"{len(spec.regimes)} regimes, {len(spec.spec['feature_catalog'])} catalog features)")
    for label, data, state in (("dict of arrays, state-free", cols, None),
                               ("dict of arrays, with state", cols, {"waiting_depth": cols["waiting_depth"],
                                                                     "kv_usage_ratio": cols["kv_usage_ratio"]}),
                               ("DataFrame, state-free", frame, None)):
        spec.predict(data if not isinstance(data, dict) else {k: v[:1000] for k, v in data.items()},
                     None if state is None else {k: v[:1000] for k, v in state.items()})  # warm-up
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            p = spec.predict(data, state)
            times.append(time.perf_counter() - t0)
        assert np.isfinite(p.value).all() and len(p.value) == a.rows
        best, med = min(times), float(np.median(times))
        print(f"throughput {label:<28}: {a.rows:,} rows  best {best * 1e3:7.1f} ms = {a.rows / best / 1e6:5.2f} M rows/s"
              f"  median {med * 1e3:7.1f} ms = {a.rows / med / 1e6:5.2f} M rows/s"
              f"  target >= {TARGET_ROWS_S / 1e6:.0f}M (best run; shared machine): "
              f"{'PASS' if a.rows / best >= TARGET_ROWS_S else 'FAIL'}")
    rows = [{k: float(v[i]) for k, v in cols.items()} for i in range(min(a.calls, a.rows))]
    for label, with_state in (("single row, state-free", False), ("single row, with state", True)):
        lat = np.empty(len(rows))
        for i, r in enumerate(rows):
            st = {"waiting_depth": r["waiting_depth"], "kv_usage_ratio": r["kv_usage_ratio"]} if with_state else None
            t0 = time.perf_counter()
            spec.predict(r, st)
            lat[i] = time.perf_counter() - t0
        print(f"latency {label:<24}: {len(rows):,} calls  median {np.median(lat) * 1e6:7.1f} us  "
              f"p90 {np.percentile(lat, 90) * 1e6:7.1f} us  min {lat.min() * 1e6:7.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
