"""The release report: every image it references is a real PNG inside the report folder, every table number
equals metrics.json / gate.json, the Markdown twin agrees, and the page is static (no script, no URL)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from molerd import plots
from molerd import report as rep

MODELS = ("candidate", "champion", "blis_block", "blackbox", "gbm")
REGIMES = {"beta": ("prefill_dominated", "decode_dominated", "mixed_balanced", "saturation"),
           "alpha": ("low_load", "normal_load", "high_pressure", "preemption")}
SCOPES = (("H100", "llama-3.1-8b-instruct", 1), ("A100-80", "qwen2.5-7b-instruct", 2))
NOISE = {"candidate": 0.05, "champion": 0.15, "blis_block": 0.25, "blackbox": 0.4, "gbm": 0.03}
THRESHOLDS = {"beta": {"kv_usage_ratio": [0.9], "prefill_ratio": [0.3, 0.7]},
              "alpha": {"kv_usage_ratio": [0.85], "waiting_depth": [2]}}


def _stats(y: np.ndarray, p: np.ndarray) -> dict:
    ok = np.isfinite(p)
    if not ok.any():
        return {"mape": None, "median_ape": None, "p90_ape": None, "n": 0}
    ape = np.abs(p[ok] - y[ok]) / y[ok] * 100
    return {"mape": float(ape.mean()), "median_ape": float(np.median(ape)), "p90_ape": float(np.percentile(ape, 90)),
            "n": int(ok.sum())}


def make_eval_dir(path: Path, n: int = 400, seed: int = 0, *, release_layout: bool = False,
                  with_optional: bool = True) -> Path:
    """A small evaluate-stage output following the contract; metrics are computed from the predictions."""
    rng = np.random.default_rng(seed)
    rows = []
    for target, regimes in REGIMES.items():
        for i in range(n):
            hw, model, tp = SCOPES[(i // len(regimes)) % len(SCOPES)]
            regime = regimes[i % len(regimes)]
            y = float(np.exp(rng.uniform(np.log(200), np.log(50_000))))
            row = {"target": target, "hardware": hw, "model": model, "tp": tp, "trace_id": f"t{i % 7}",
                   "regime": regime, "y_true": y, "kv_usage_ratio": rng.uniform(0, 1),
                   "waiting_depth": float(rng.integers(0, 40)), "prefill_ratio": rng.uniform(0, 1)}
            for m in MODELS:
                row[f"pred_{m}"] = y * float(np.exp(rng.normal(0, NOISE[m])))
            if target == "alpha":
                row["pred_blis_block"] = np.nan
            rows.append(row)
    pred = pd.DataFrame(rows)
    metrics: dict = {}
    for target, part in pred.groupby("target", sort=True):
        y = part["y_true"].to_numpy()
        block = {"overall": {m: _stats(y, part[f"pred_{m}"].to_numpy()) for m in MODELS}, "per_regime": {},
                 "per_scope": {}}
        for regime, g in part.groupby("regime", sort=True):
            block["per_regime"][regime] = {m: _stats(g["y_true"].to_numpy(), g[f"pred_{m}"].to_numpy()) for m in MODELS}
        for (hw, model, tp), g in part.groupby(["hardware", "model", "tp"], sort=True):
            block["per_scope"][f"{hw}/{model}/tp{tp}"] = {
                m: _stats(g["y_true"].to_numpy(), g[f"pred_{m}"].to_numpy()) for m in MODELS}
        metrics[target] = block
    gate = {"decision": "promote", "reasons": ["candidate beats champion on beta and alpha"],
            "candidate_mape": metrics["beta"]["overall"]["candidate"]["mape"],
            "champion_mape": metrics["beta"]["overall"]["champion"]["mape"],
            "bootstrap_ci": [-9.5, -6.25], "frac_improved": 0.998,
            "per_regime": {r: {"candidate": v["candidate"]["mape"], "champion": v["champion"]["mape"]}
                           for r, v in metrics["beta"]["per_regime"].items()},
            "thresholds": THRESHOLDS}
    coverage = {"counts": [{"hardware": hw, "target": t, "regime": r, "rows": int(((pred["hardware"] == hw)
                            & (pred["target"] == t) & (pred["regime"] == r)).sum())}
                           for t in REGIMES for r in REGIMES[t] for hw, _, _ in SCOPES],
                "missing": [{"hardware": "L40S", "target": "beta", "regime": "saturation"}]}
    coverage["counts"].append({"hardware": "L40S", "target": "beta", "regime": "decode_dominated", "rows": 0})
    x = np.linspace(0, 1, 41)
    sweep = pd.concat([pd.DataFrame({"target": t, "axis": a, "x": x,
                                     "pred_hard": 1000 + 500 * (x > thr[0]),
                                     "pred_soft": 1000 + 500 / (1 + np.exp(-(x - thr[0]) / 0.05))})
                       for t, axes in THRESHOLDS.items() for a, thr in axes.items() if a != "waiting_depth"],
                      ignore_index=True)
    path.mkdir(parents=True, exist_ok=True)
    sub = path / "eval" if release_layout else path
    sub.mkdir(exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2))
    pred.to_parquet(sub / "predictions.parquet", index=False)
    if with_optional:
        (path / "gate.json").write_text(json.dumps(gate, indent=2))
        (sub / "coverage.json").write_text(json.dumps(coverage, indent=2))
        sweep.to_parquet(sub / "sweep.parquet", index=False)
    return path


class _Page(HTMLParser):
    """Collects img sources, tables (id -> header keys, rows of cell text) and every attribute value."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tables: dict[str, dict] = {}
        self.attrs: list[str] = []
        self._table = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs += [v for v in a.values() if v]
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(a["id"], {"keys": [], "rows": []})
        elif tag == "th" and self._table is not None:
            self._table["keys"].append(a["data-key"])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td":
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row:
            self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _md_tables(text: str) -> dict[str, dict]:
    tables, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"<!-- table: (\S+) keys: (\S*) -->", line)
        if m:
            rows, j = [], i + 3
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip().replace("\\|", "|") for c in lines[j].strip().strip("|").split(" | ")])
                j += 1
            tables[m.group(1)] = {"keys": m.group(2).split(","), "rows": rows}
    return tables


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    eval_dir = make_eval_dir(root / "eval_out")
    pred = pd.read_parquet(eval_dir / "predictions.parquet")  # three unusable measurements, after metrics
    pred.loc[[0, 1, 2], "y_true"] = [0.0, -3.0, np.nan]
    pred.to_parquet(eval_dir / "predictions.parquet", index=False)
    index = rep.build_report(eval_dir, root / "report", title="test report", max_points=300)
    return eval_dir, root / "report", index


def _expected_metric_rows(metrics: dict, target: str, section: str) -> dict[str, dict[str, str]]:
    return {g: {m: rep.fmt(stats.get("mape")) for m, stats in models.items()}
            for g, models in metrics[target][section].items()}


def test_images_exist_and_are_png(built):
    _, out, index = built
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    assert len(page.imgs) >= 10  # 2 targets x (2 bars + scatter + residuals + coverage) + gate + sweep
    for src in page.imgs:
        assert not src.startswith(("/", "data:")) and ".." not in src
        f = out / src
        assert f.is_file(), src
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"tEXt" not in data and b"tIME" not in data  # no software stamp or date: reproducible bytes
        with Image.open(f) as im:
            im.verify()
        with Image.open(f) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    md = (out / "report.md").read_text(encoding="utf-8")
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == sorted(page.imgs)


def test_html_tables_equal_metrics(built):
    eval_dir, out, index = built
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    md = _md_tables((out / "report.md").read_text(encoding="utf-8"))
    checked = 0
    for target in ("beta", "alpha"):
        for section in ("per_regime", "per_scope"):
            tid = f"{target}-{section.replace('_', '-')}"
            for source in (page.tables[tid], md[tid]):
                keys, rows = source["keys"], source["rows"]
                expected = _expected_metric_rows(metrics, target, section)
                assert sorted(r[0] for r in rows) == sorted(expected)
                for row in rows:
                    for key, cell in zip(keys[1:], row[1:], strict=True):
                        if key in expected[row[0]]:
                            assert cell == expected[row[0]][key], (tid, row[0], key)
                            checked += 1
        overall = page.tables[f"{target}-overall"]
        assert overall["keys"] == ["model", "mape", "median_ape", "p90_ape", "n"]
        assert len(overall["rows"]) == len(MODELS)
        for row, m in zip(overall["rows"], MODELS, strict=True):
            s = metrics[target]["overall"][m]
            assert row[1:] == [rep.fmt(s["mape"]), rep.fmt(s["median_ape"]), rep.fmt(s["p90_ape"]), str(s["n"])]
            checked += 1
    assert checked > 80
    # alpha has no BLIS block prediction: shown as missing, never as 0.00
    alpha_overall = {r[0]: r for r in page.tables["alpha-overall"]["rows"]}
    assert alpha_overall[plots.model_label("blis_block")][1] == rep.MISSING


def test_gate_and_coverage_tables(built):
    eval_dir, _, index = built
    gate = json.loads((eval_dir / "gate.json").read_text())
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    row = dict(zip(page.tables["gate-summary"]["keys"], page.tables["gate-summary"]["rows"][0], strict=True))
    assert row["decision"] == "promote"
    assert row["ci_lo"] == "-9.50" and row["ci_hi"] == "-6.25" and row["frac_improved"] == "1.00"
    assert row["candidate_mape"] == rep.fmt(gate["candidate_mape"])
    assert row["diff"] == rep.fmt(gate["candidate_mape"] - gate["champion_mape"])
    cov = page.tables["coverage-beta"]
    assert "L40S" in [r[0] for r in cov["rows"]]
    l40s = dict(zip(cov["keys"], next(r for r in cov["rows"] if r[0] == "L40S"), strict=True))
    assert l40s["decode_dominated"] == "0" and l40s["saturation"] == "0"
    sweep = {(r[1], r[2]): r for r in page.tables["sweep-jumps"]["rows"]}  # one scope here: (target, axis)
    hard, soft = float(sweep[("beta", "kv_usage_ratio")][4]), float(sweep[("beta", "kv_usage_ratio")][5])
    assert hard > 30 and soft < hard / 3  # the hard gate jumps by 500/1500; the soft one is smooth
    assert "L40S" in index.read_text(encoding="utf-8")  # the missing-regime list


def test_page_is_static(built):
    _, out, index = built
    text = index.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert not re.search(r"https?://", text)
    assert not re.search(r"https?://", (out / "report.md").read_text(encoding="utf-8"))
    page = _Page()
    page.feed(text)
    assert not any(v.lower().startswith(("http", "//", "javascript:")) for v in page.attrs)


def test_deterministic_bytes(built, tmp_path):
    eval_dir, out, _ = built
    rep.build_report(eval_dir, tmp_path / "again", title="test report", max_points=300)
    for f in sorted(out.rglob("*")):
        if f.is_file():
            assert (tmp_path / "again" / f.relative_to(out)).read_bytes() == f.read_bytes(), f.name


def test_missing_optional_parts_are_noted(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "e", n=40, with_optional=False)
    (eval_dir / "predictions.parquet").unlink()
    index = rep.build_report(eval_dir, tmp_path / "r")
    text = index.read_text(encoding="utf-8")
    for name in ("gate.json", "predictions.parquet", "coverage.json", "sweep.parquet"):
        assert f"{name} not found" in text
    assert 'id="beta-per-regime"' in text


def test_gate_found_in_sibling_gate_folder(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "data" / "eval", n=40)
    (tmp_path / "data" / "gate").mkdir()
    (eval_dir / "gate.json").rename(tmp_path / "data" / "gate" / "gate.json")
    inputs = rep.load_eval_inputs(eval_dir)
    assert inputs.gate["decision"] == "promote" and inputs.files["gate"] == "../gate/gate.json"
    assert inputs.thresholds["beta"]["prefill_ratio"] == [0.3, 0.7]
    with pytest.raises(rep.ReportInputError, match="gate file .*nope.json does not exist"):
        rep.load_eval_inputs(eval_dir, gate_path=tmp_path / "nope.json")


def test_bad_inputs_have_clear_errors(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "e", n=40)
    m = json.loads((eval_dir / "metrics.json").read_text())
    m["beta"]["per_regime"]["saturation"]["candidate"]["mape"] = "12%"
    (eval_dir / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(rep.ReportInputError, match=r"beta\.per_regime\.saturation\.candidate\.mape"):
        rep.build_report(eval_dir, tmp_path / "r")
    (eval_dir / "metrics.json").unlink()
    with pytest.raises(rep.ReportInputError, match="metrics.json not found"):
        rep.build_report(eval_dir, tmp_path / "r")


def test_broken_optional_file_is_a_note_or_strict_error(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "e", n=40)
    cov = json.loads((eval_dir / "coverage.json").read_text())
    cov["counts"][3]["rows"] = -5
    (eval_dir / "coverage.json").write_text(json.dumps(cov))
    inputs = rep.load_eval_inputs(eval_dir)  # what build_report puts under "Notes"
    assert inputs.coverage is None
    assert any("coverage.json could not be used" in n and "counts[3].rows" in n for n in inputs.notes)
    assert inputs.predictions is not None and inputs.gate is not None  # the rest is still used
    with pytest.raises(rep.ReportInputError, match=r"counts\[3\]\.rows must be a count >= 0"):
        rep.load_eval_inputs(eval_dir, strict=True)


def test_bad_y_true_rows_are_counted_not_lost(built):
    _, out, index = built
    for text in (index.read_text(encoding="utf-8"), (out / "report.md").read_text(encoding="utf-8")):
        assert "3 beta row(s) with a missing, zero or negative y_true" in text


def test_subsample_is_stratified_and_deterministic():
    df = pd.DataFrame({"regime": ["a"] * 1000 + ["b"] * 20, "v": np.arange(1020)})
    s1, s2 = rep.subsample(df, 100, seed=3), rep.subsample(df, 100, seed=3)
    assert len(s1) == 100 and s1.equals(s2)
    assert (s1["regime"] == "b").sum() == 20  # the rare regime keeps all its rows
    assert not s1.equals(rep.subsample(df, 100, seed=4))


def test_dvc_plots(built, tmp_path):
    eval_dir, _, _ = built
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    written = rep.write_dvc_plots(eval_dir, tmp_path / "plots", max_points=50)
    per = pd.read_csv(written["per_regime_mape"])
    assert list(per.columns) == ["target", "regime", "model", "mape", "regime_model"]
    for r in per.itertuples():
        v = metrics[r.target]["per_regime"][r.regime][r.model]["mape"]
        assert (np.isnan(r.mape) and v is None) or r.mape == pytest.approx(v, rel=1e-12)
    pva = pd.read_csv(written["pred_vs_actual"])
    assert {"target", "regime", "y_true", "candidate", "champion"} <= set(pva.columns)
    assert len(pva) == 100  # 50 per target
    again = rep.write_dvc_plots(eval_dir, tmp_path / "plots2", max_points=50)
    for k, p in written.items():
        assert again[k].read_bytes() == p.read_bytes()


def test_cli_eval_dir_and_release(tmp_path, monkeypatch):
    import typer

    from molerd.cli import report as cli_report

    # a group app (the real one may hold only this command while the project grows, which typer collapses)
    app = typer.Typer()
    app.callback()(lambda: None)
    cli_report.register(app)
    runner = CliRunner()
    eval_dir = make_eval_dir(tmp_path / "e", n=40, with_optional=False)
    (eval_dir / "predictions.parquet").unlink()  # metrics only: keeps this plumbing test fast
    res = runner.invoke(app, ["report", str(eval_dir), "--out", str(tmp_path / "r"), "--plots", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "p" / "per_regime_mape.csv").is_file()

    monkeypatch.chdir(tmp_path)  # the registry is data/releases of the project being worked on
    rel = make_eval_dir(tmp_path / "data" / "releases" / "v1", n=40, release_layout=True)
    (rel / "eval" / "predictions.parquet").unlink()  # optional parts may be missing; keeps the test fast
    (rel / "eval" / "sweep.parquet").unlink()
    before = sorted(p.relative_to(rel) for p in rel.rglob("*"))
    res = runner.invoke(app, ["report", "v1"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "data" / "reports" / "v1" / "index.html").read_text(encoding="utf-8")
    assert "eval/coverage.json" in text and 'id="coverage-alpha"' in text and 'id="gate-summary"' in text
    assert "predictions.parquet not found" in text
    assert sorted(p.relative_to(rel) for p in rel.rglob("*")) == before  # the release itself is never touched
    res = runner.invoke(app, ["report", "--release", "v1", "--out", str(tmp_path / "elsewhere")])
    assert res.exit_code == 0 and (tmp_path / "elsewhere" / "index.html").is_file()
    res = runner.invoke(app, ["report", "v9"])
    assert res.exit_code == 2 and "available: ['v1']" in res.output


def test_gate_blocks_nested_per_target():
    gate = {"decision": "reject", "reasons": ["alpha got worse"],
            "beta": {"decision": "promote", "overall": {"candidate": {"mape": 5.0}, "champion": {"mape": 8.0}},
                     "ci": {"lo": -4.0, "hi": -1.5}, "fraction_improved": 0.99},
            "alpha": {"decision": "reject", "candidate_mape": 20.0, "champion_mape": 18.0, "bootstrap_ci": [0.5, 3.5]},
            "thresholds": {"kv_usage_ratio": 0.9}}
    blocks = dict(rep.gate_blocks(gate))
    assert list(blocks) == ["overall", "alpha", "beta"]
    beta = rep._gate_summary(blocks["beta"])
    assert (beta["candidate"], beta["champion"], beta["diff"], beta["lo"], beta["hi"], beta["frac"]) == (
        5.0, 8.0, -3.0, -4.0, -1.5, 0.99)
    alpha = rep._gate_summary(blocks["alpha"])
    assert alpha["diff"] == 2.0 and alpha["decision"] == "reject"
    # the pipeline's shape: top-level decision, a combined summary, one report per part (also under combined)
    part = {"decision": "promote", "candidate_mape": 4.0, "champion_mape": 6.0, "mape_diff": -2.0,
            "bootstrap": {"fraction_improved": 0.97, "mape_diff_ci": [-3.0, -1.0]}}
    nested = {"decision": "promote", "champion": "baseline",
              "combined": {"decision": "promote", "reasons": ["all 1 required part(s) promote: beta"],
                           "reports": {"beta": part}},
              "parts": {"beta": part}}
    blocks = rep.gate_blocks(nested)
    assert [b[0] for b in blocks] == ["overall", "beta"]
    assert blocks[0][1]["reasons"] == ["all 1 required part(s) promote: beta"]
    beta = rep._gate_summary(blocks[1][1])
    assert (beta["lo"], beta["hi"], beta["frac"], beta["diff"]) == (-3.0, -1.0, 0.97, -2.0)


def test_thresholds_forms_and_errors():
    shared = rep.normalize_thresholds({"prefill_ratio": [0.7, 0.3], "kv_usage_ratio": 0.9})
    assert shared["beta"] == shared["alpha"] == {"prefill_ratio": [0.3, 0.7], "kv_usage_ratio": [0.9]}
    per = rep.normalize_thresholds(THRESHOLDS)
    assert per["alpha"]["waiting_depth"] == [2.0] and "waiting_depth" not in per["beta"]
    # the detector's threshold names (params.yaml label section) map onto the plotted axes
    named = rep.normalize_thresholds({"alpha": {"low_load_max_queue_depth": 2, "high_pressure_kv": 0.85},
                                      "beta": {"prefill_ratio_high": 0.7, "prefill_ratio_low": 0.3,
                                               "saturation_kv": 0.9}})
    assert named == {"alpha": {"waiting_depth": [2.0], "kv_usage_ratio": [0.85]},
                     "beta": {"prefill_ratio": [0.3, 0.7], "kv_usage_ratio": [0.9]}}
    with pytest.raises(rep.ReportInputError, match=r"thresholds\.beta\.kv_usage_ratio: values must be finite"):
        rep.normalize_thresholds({"beta": {"kv_usage_ratio": ["high"]}})


def test_gate_per_regime_nested_by_target():
    flat = rep._flatten_gate_regimes({"beta": {"saturation": {"candidate": 3.0, "champion": {"mape": 4.0}}},
                                      "low_load": {"candidate": {"mape": 1.0}}})
    assert flat == {"beta/saturation": {"candidate": 3.0, "champion": {"mape": 4.0}},
                    "low_load": {"candidate": {"mape": 1.0}}}


def test_training_warnings_are_listed(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "e", n=40, with_optional=False)
    (eval_dir / "predictions.parquet").unlink()
    notes = [{"scope": "H100/m/tp1", "target": "beta", "kind": "regime saturation: global",
              "detail": "3 rows < min_rows=50: uses the global expert"},
             {"scope": "H100/m/tp1", "target": "alpha", "kind": "feature kv_fragmentation dropped",
              "detail": "the traces carry no kv_fragmentation_ratio"}]
    (eval_dir / "model_notes.json").write_text(json.dumps(notes))
    index = rep.build_report(eval_dir, tmp_path / "r")
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    rows = page.tables["model-notes"]["rows"]
    assert [r[2] for r in rows] == [n["kind"] for n in notes] and rows[0][3] == notes[0]["detail"]
    assert "3 rows &lt; min_rows=50" in index.read_text(encoding="utf-8")
    md = _md_tables((tmp_path / "r" / "report.md").read_text(encoding="utf-8"))
    assert len(md["model-notes"]["rows"]) == 2
    (eval_dir / "model_notes.json").write_text("[]")
    text = rep.build_report(eval_dir, tmp_path / "r2").read_text(encoding="utf-8")
    assert "Every regime of every scope has its own expert" in text
