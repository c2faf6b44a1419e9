"""Release format, strict loader, reference predictor and golden vectors (spec: ``docs/release-format.md``).

A release is plain JSON that any consumer (this module, the Go evaluator in ``integrations/blis``, a BLIS
backend) can evaluate from the file alone: every feature is a named formula over raw inputs and scope
constants, the gate is the soft decision list or logistic classifier of ``MoLERegressor.to_spec()``
(format ``molerd.mole/v1``), each regime expert is a linear model over named features. Loading never executes code: formulas are parsed with :mod:`ast` and
walked through a whitelist (numbers, names, + - * / **, unary minus, comparisons, ``a if c else b``,
``min``/``max``/``abs``/``exp``/``log``/``sqrt``).

The reference predictor imports nothing from the training code except the shared feature catalog
(:mod:`molerd.features`): a feature whose formula in the file is the catalog's formula is computed by the
catalog's own function, any other by the formula interpreter; a test proves both agree.
"""

from __future__ import annotations

import ast
import json
import math
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
FORMAT_NAME = "molerd-release"
GOLDEN_FORMAT = "molerd-golden"
GOLDEN_RTOL = 1e-9
TARGETS = ("beta", "alpha")
GATE_OPS = (">", ">=", "<", "<=")
MOLE_SPEC_FORMAT = "molerd.mole/v1"
FUNCTIONS = {"min": 2, "max": 2, "abs": 1, "exp": 1, "log": 1, "sqrt": 1}

class ReleaseFormatError(ValueError):
    """A release or golden file breaks the format: the message names the file, the JSON path and the rule."""


class ReleasePredictError(ValueError):
    """A prediction cannot be made (missing input, non-finite feature); names the row, input and scope."""


# =========================================================================================================
# Formula language (safe: parsed with ast, whitelisted, never eval'd)
# =========================================================================================================

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_CMPOPS = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!="}


def parse_formula(text: str) -> Any:
    """Parse a formula into a tiny tuple AST; raises ValueError naming the construct that is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"formula must be a non-empty string, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"formula {text!r} is not valid: {exc.msg}") from exc

    def walk(n: ast.AST) -> Any:
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return ("num", float(n.value))
        if isinstance(n, ast.Name):
            return ("var", n.id)
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return ("bin", _BINOPS[type(n.op)], walk(n.left), walk(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            inner = walk(n.operand)
            return ("neg", inner) if isinstance(n.op, ast.USub) else inner
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _CMPOPS:
            return ("cmp", _CMPOPS[type(n.ops[0])], walk(n.left), walk(n.comparators[0]))
        if isinstance(n, ast.IfExp):
            return ("if", walk(n.test), walk(n.body), walk(n.orelse))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in FUNCTIONS and not n.keywords:
            if len(n.args) != FUNCTIONS[n.func.id]:
                raise ValueError(f"formula {text!r}: {n.func.id}() takes {FUNCTIONS[n.func.id]} argument(s)")
            return ("call", n.func.id, *[walk(a) for a in n.args])
        raise ValueError(f"formula {text!r}: construct {ast.dump(n)[:60]!r} is not allowed "
                         f"(allowed: numbers, names, + - * / **, comparisons, a if c else b, {sorted(FUNCTIONS)})")

    return walk(tree)


def formula_names(tree: Any) -> set[str]:
    """Identifiers a parsed formula reads."""
    if tree[0] == "var":
        return {tree[1]}
    if tree[0] == "num":
        return set()
    return set().union(*(formula_names(t) for t in tree[1:] if isinstance(t, tuple)))


def eval_formula(tree: Any, env: Mapping[str, np.ndarray]) -> np.ndarray:
    """Vectorised IEEE float64 evaluation (x/0 = ±inf or nan, like Go); ``a if c else b`` selects per row."""
    kind = tree[0]
    if kind == "num":
        return np.float64(tree[1])
    if kind == "var":
        return env[tree[1]]
    with np.errstate(all="ignore"):
        if kind == "neg":
            return -eval_formula(tree[1], env)
        if kind == "bin":
            a, b = eval_formula(tree[2], env), eval_formula(tree[3], env)
            op = tree[1]
            return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b if op == "/" else np.power(a, b)
        if kind == "cmp":
            a, b = eval_formula(tree[2], env), eval_formula(tree[3], env)
            res = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal,
                   "==": np.equal, "!=": np.not_equal}[tree[1]](a, b)
            return res.astype("float64")
        if kind == "if":
            return np.where(eval_formula(tree[1], env) != 0, eval_formula(tree[2], env), eval_formula(tree[3], env))
        if kind == "call":
            args = [eval_formula(t, env) for t in tree[2:]]
            fn = tree[1]
            if fn == "min":
                return np.minimum(*args)
            if fn == "max":
                return np.maximum(*args)
            return {"abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt}[fn](args[0])
    raise ValueError(f"bad formula node {tree!r}")


# =========================================================================================================
# Strict structure validation
# =========================================================================================================


class _V:
    """Tiny strict validator: every error names the file and the JSON path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, msg: str) -> None:
        raise ReleaseFormatError(f"{self.source}: {path}: {msg}")

    def obj(self, d: Any, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
        if not isinstance(d, dict):
            self.fail(path, f"expected an object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(required) - set(optional))
        if unknown:
            self.fail(path, f"unknown key(s) {unknown}; allowed: {sorted(set(required) | set(optional))}")
        missing = [k for k in required if k not in d]
        if missing:
            self.fail(path, f"missing required key(s) {missing}")
        return d

    def mapping(self, d: Any, path: str) -> dict:
        """An object whose keys are names chosen by the writer (features, scopes, ...)."""
        if not isinstance(d, dict):
            self.fail(path, f"expected an object, got {type(d).__name__}")
        return d

    def num(self, v: Any, path: str, *, nullable: bool = False, ge: float | None = None, gt: float | None = None) -> None:
        if v is None and nullable:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(path, f"expected a finite number, got {v!r}")
        if ge is not None and v < ge:
            self.fail(path, f"must be >= {ge}, got {v!r}")
        if gt is not None and v <= gt:
            self.fail(path, f"must be > {gt}, got {v!r}")

    def string(self, v: Any, path: str, *, nullable: bool = False, choices: Sequence[str] | None = None) -> None:
        if v is None and nullable:
            return
        if not isinstance(v, str):
            self.fail(path, f"expected a string, got {v!r}")
        if choices is not None and v not in choices:
            self.fail(path, f"must be one of {list(choices)}, got {v!r}")

    def numlist(self, v: Any, path: str, n: int | None = None) -> None:
        if not isinstance(v, list):
            self.fail(path, f"expected a list of numbers, got {type(v).__name__}")
        if n is not None and len(v) != n:
            self.fail(path, f"expected {n} numbers, got {len(v)}")
        for i, x in enumerate(v):
            self.num(x, f"{path}[{i}]")

    def strlist(self, v: Any, path: str) -> None:
        if not isinstance(v, list):
            self.fail(path, f"expected a list of strings, got {type(v).__name__}")
        for i, x in enumerate(v):
            self.string(x, f"{path}[{i}]")

    def metrics(self, v: Any, path: str) -> None:
        """Metrics: nested objects of numbers, strings, booleans, null and lists of those."""
        if isinstance(v, dict):
            for k, x in v.items():
                self.metrics(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                self.metrics(x, f"{path}[{i}]")
        elif v is None or isinstance(v, (str, bool)):
            return
        elif isinstance(v, (int, float)):
            if not math.isfinite(v):
                self.fail(path, f"non-finite number {v!r} (write null for 'not measured')")
        else:
            self.fail(path, f"unsupported value {v!r}")


_RULE_KEYS = ["regime", "input", "op", "threshold", "width", "center", "slope", "direction"]
_EXPERT_KEYS = ["features", "coef", "intercept"]
_EXPERT_OPTIONAL = ["ridge_alpha", "constant_features", "source", "n_rows", "note"]


def _validate_expert(v: _V, e: Any, path: str, catalog: Mapping) -> None:
    v.obj(e, path, _EXPERT_KEYS, _EXPERT_OPTIONAL)
    v.strlist(e["features"], f"{path}.features")
    for f in e["features"]:
        if f not in catalog:
            v.fail(f"{path}.features", f"feature {f!r} is not described in feature_catalog")
    v.numlist(e["coef"], f"{path}.coef", len(e["features"]))
    v.num(e["intercept"], f"{path}.intercept")
    if "ridge_alpha" in e:
        v.num(e["ridge_alpha"], f"{path}.ridge_alpha", nullable=True)
    if "constant_features" in e:
        v.strlist(e["constant_features"], f"{path}.constant_features")


def _validate_model_spec(v: _V, spec: Any, path: str, target: str) -> None:
    """Strict check of a ``MoLERegressor.to_spec()`` dict (format ``molerd.mole/v1``)."""
    v.obj(spec, path, ["format", "target", "prediction_floor_us", "regimes", "gate", "experts", "global_expert",
                       "state_free", "feature_catalog", "raw_inputs", "scope_constants"],
          ["target_semantics", "units", "feature_set", "loss", "params", "dropped_features", "n_dropped_rows",
           "backup_expert", "constant_us"])
    v.string(spec["format"], f"{path}.format", choices=[MOLE_SPEC_FORMAT])
    v.string(spec["target"], f"{path}.target", choices=[target])
    if spec.get("units", "us") != "us":
        v.fail(f"{path}.units", f"must be 'us', got {spec['units']!r}")
    v.num(spec["prediction_floor_us"], f"{path}.prediction_floor_us")
    v.strlist(spec["regimes"], f"{path}.regimes")
    regimes = spec["regimes"]
    if not regimes or len(set(regimes)) != len(regimes):
        v.fail(f"{path}.regimes", f"expected a non-empty list of distinct names, got {regimes!r}")
    v.strlist(spec["raw_inputs"], f"{path}.raw_inputs")
    # scope constants
    v.mapping(spec["scope_constants"], f"{path}.scope_constants")
    for sid, consts in spec["scope_constants"].items():
        v.mapping(consts, f"{path}.scope_constants.{sid}")
        for k, x in consts.items():
            v.num(x, f"{path}.scope_constants.{sid}.{k}")
    const_names = set().union(*[set(c) for c in spec["scope_constants"].values()]) if spec["scope_constants"] else set()
    # feature catalog: formulas over raw inputs, scope constants and other catalogued features
    cat = spec["feature_catalog"]
    v.mapping(cat, f"{path}.feature_catalog")
    allowed = set(spec["raw_inputs"]) | const_names | set(cat)
    for name, f in cat.items():
        fp = f"{path}.feature_catalog.{name}"
        v.obj(f, fp, ["expression"], ["unit", "description", "columns", "constants"])
        try:
            refs = formula_names(parse_formula(f["expression"]))
        except ValueError as exc:
            v.fail(f"{fp}.expression", str(exc))
        bad = sorted(refs - allowed)
        if bad:
            v.fail(f"{fp}.expression", f"uses name(s) {bad} that are neither raw_inputs, scope constants nor catalogued features")
    try:
        _feature_order(cat, set(spec["raw_inputs"]) | const_names)
    except ReleaseFormatError as exc:
        v.fail(f"{path}.feature_catalog", str(exc))
    # gate
    gate = spec["gate"]
    if not isinstance(gate, dict) or gate.get("kind") not in ("rules", "classifier"):
        v.fail(f"{path}.gate.kind", f"must be 'rules' or 'classifier', got {gate.get('kind') if isinstance(gate, dict) else gate!r}")
    if gate["kind"] == "rules":
        v.obj(gate, f"{path}.gate", ["kind", "default_regime", "rules", "inputs"], ["rule_order", "thresholds", "learned"])
        v.string(gate["default_regime"], f"{path}.gate.default_regime", choices=regimes)
        if not isinstance(gate["rules"], list):
            v.fail(f"{path}.gate.rules", "expected a list")
        for i, r in enumerate(gate["rules"]):
            rp = f"{path}.gate.rules[{i}]"
            v.obj(r, rp, _RULE_KEYS)
            v.string(r["regime"], f"{rp}.regime", choices=regimes)
            v.string(r["input"], f"{rp}.input", choices=sorted(gate["inputs"]) if isinstance(gate["inputs"], dict) else None)
            v.string(r["op"], f"{rp}.op", choices=GATE_OPS)
            v.num(r["threshold"], f"{rp}.threshold")
            v.num(r["width"], f"{rp}.width", ge=0)
            v.num(r["center"], f"{rp}.center")
            v.num(r["direction"], f"{rp}.direction")
            if r["direction"] not in (1, -1, 1.0, -1.0):
                v.fail(f"{rp}.direction", f"must be 1 or -1, got {r['direction']!r}")
            if r["width"] > 0:
                v.num(r["slope"], f"{rp}.slope", gt=0)
            elif r["slope"] is not None:
                v.fail(f"{rp}.slope", "must be null when width is 0 (hard rule)")
        if "thresholds" in gate:
            v.metrics(gate["thresholds"], f"{path}.gate.thresholds")
        if "learned" in gate:
            v.metrics(gate["learned"], f"{path}.gate.learned")
        if "rule_order" in gate:
            v.strlist(gate["rule_order"], f"{path}.gate.rule_order")
    else:
        v.obj(gate, f"{path}.gate", ["kind", "inputs", "median", "mean", "scale", "classes", "coef", "intercept"],
              ["model", "heldout_accuracy"])
        ni = len(gate["inputs"]) if isinstance(gate["inputs"], dict) else -1
        for key in ("median", "mean", "scale"):
            v.numlist(gate[key], f"{path}.gate.{key}", ni)
        for i, s_ in enumerate(gate["scale"]):
            v.num(s_, f"{path}.gate.scale[{i}]", gt=0)
        v.strlist(gate["classes"], f"{path}.gate.classes")
        for c in gate["classes"]:
            v.string(c, f"{path}.gate.classes", choices=regimes)
        nc = len(gate["classes"])
        if nc == 0:
            v.fail(f"{path}.gate.classes", "needs at least one class")
        n_rows = 0 if nc == 1 else (1 if nc == 2 else nc)
        if not isinstance(gate["coef"], list) or len(gate["coef"]) != n_rows:
            v.fail(f"{path}.gate.coef", f"expected {n_rows} row(s) for {nc} class(es)")
        for i, row in enumerate(gate["coef"]):
            v.numlist(row, f"{path}.gate.coef[{i}]", ni)
        v.numlist(gate["intercept"], f"{path}.gate.intercept", n_rows)
        if "heldout_accuracy" in gate:
            v.num(gate["heldout_accuracy"], f"{path}.gate.heldout_accuracy", nullable=True)
    v.mapping(gate["inputs"], f"{path}.gate.inputs")
    for k, expr in gate["inputs"].items():
        try:
            refs = formula_names(parse_formula(expr))
        except ValueError as exc:
            v.fail(f"{path}.gate.inputs.{k}", str(exc))
        bad = sorted(refs - set(spec["raw_inputs"]))
        if bad:
            v.fail(f"{path}.gate.inputs.{k}", f"uses name(s) {bad} not in raw_inputs")
    # experts
    v.obj(spec["experts"], f"{path}.experts", regimes)
    for r in regimes:
        _validate_expert(v, spec["experts"][r], f"{path}.experts.{r}", cat)
    _validate_expert(v, spec["global_expert"], f"{path}.global_expert", cat)
    if "backup_expert" in spec:
        _validate_expert(v, spec["backup_expert"], f"{path}.backup_expert", cat)
    if "constant_us" in spec:
        v.num(spec["constant_us"], f"{path}.constant_us")
    sf = v.obj(spec["state_free"], f"{path}.state_free", ["state_inputs", "assume"], ["regime", "rule"])
    v.strlist(sf["state_inputs"], f"{path}.state_free.state_inputs")
    for k in sf["state_inputs"]:
        v.string(k, f"{path}.state_free.state_inputs", choices=sorted(gate["inputs"]))
    v.obj(sf["assume"], f"{path}.state_free.assume", sf["state_inputs"])
    for k, x in sf["assume"].items():
        v.num(x, f"{path}.state_free.assume.{k}")
    if "regime" in sf:
        v.string(sf["regime"], f"{path}.state_free.regime", choices=regimes)
    if "params" in spec:
        v.metrics(spec["params"], f"{path}.params")
    if "dropped_features" in spec:
        v.metrics(spec["dropped_features"], f"{path}.dropped_features")


def _feature_order(features: Mapping[str, Any], shadowing: set[str] = frozenset()) -> list[str]:
    """Catalogued features in dependency order (a formula may use other features); a cycle is an error.

    A name in a formula means the raw input or scope constant of that name first (``shadowing``), and only
    otherwise the catalogued feature (features such as ``num_prefill_reqs`` share a raw column's name)."""
    deps = {k: (formula_names(parse_formula(f["expression"])) - set(shadowing)) & set(features)
            for k, f in features.items()}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(k: str, chain: list[str]) -> None:
        if state.get(k) == 2:
            return
        if state.get(k) == 1:
            raise ReleaseFormatError(f"features form a cycle: {' -> '.join(chain + [k])}")
        state[k] = 1
        for d in sorted(deps[k]):
            visit(d, chain + [k])
        state[k] = 2
        order.append(k)

    for k in features:
        visit(k, [])
    return order


def validate_release(doc: Any, source: str = "release.json") -> dict:
    """Check a release document's whole structure; returns it unchanged or raises ReleaseFormatError."""
    v = _V(source)
    v.obj(doc, "$", ["schema_version", "format", "version", "scopes"],
          ["created_utc", "provenance", "metrics", "previous_release", "notes"])
    sv = doc["schema_version"]
    if isinstance(sv, bool) or not isinstance(sv, int):
        v.fail("$.schema_version", f"expected an integer, got {sv!r}")
    if sv > SCHEMA_VERSION:
        v.fail("$.schema_version", f"release uses schema_version {sv}, newer than this reader's {SCHEMA_VERSION}; "
                                   "upgrade molerd to read it")
    if sv < 1:
        v.fail("$.schema_version", f"must be >= 1, got {sv}")
    v.string(doc["format"], "$.format", choices=[FORMAT_NAME])
    v.string(doc["version"], "$.version")
    v.string(doc.get("created_utc"), "$.created_utc", nullable=True)
    if "provenance" in doc:
        v.obj(doc["provenance"], "$.provenance", [], ["data_version", "params_version", "code_version", "seed",
                                                      "blis_version", "trained_on", "notes"])
        v.metrics(doc["provenance"], "$.provenance")
    if "metrics" in doc:
        v.metrics(doc["metrics"], "$.metrics")
    if doc.get("previous_release") is not None:
        v.obj(doc["previous_release"], "$.previous_release", ["version"], ["metrics"])
        v.string(doc["previous_release"]["version"], "$.previous_release.version")
        v.metrics(doc["previous_release"].get("metrics"), "$.previous_release.metrics")
    if not isinstance(doc["scopes"], list) or not doc["scopes"]:
        v.fail("$.scopes", "expected a non-empty list of scopes")
    seen = set()
    for i, sc in enumerate(doc["scopes"]):
        p = f"$.scopes[{i}]"
        v.obj(sc, p, ["hardware", "model", "tp"], ["beta", "alpha", "blis", "metrics"])
        v.string(sc["hardware"], f"{p}.hardware")
        v.string(sc["model"], f"{p}.model")
        if isinstance(sc["tp"], bool) or not isinstance(sc["tp"], int) or sc["tp"] < 1:
            v.fail(f"{p}.tp", f"expected an integer >= 1, got {sc['tp']!r}")
        key = (sc["hardware"], sc["model"], sc["tp"])
        if key in seen:
            v.fail(p, f"duplicate scope {key}")
        seen.add(key)
        for target in TARGETS:
            if sc.get(target) is not None:
                _validate_model_spec(v, sc[target], f"{p}.{target}", target)
        if sc.get("blis") is not None:
            _validate_blis(v, sc["blis"], f"{p}.blis")
        if "metrics" in sc:
            v.metrics(sc["metrics"], f"{p}.metrics")
        if sc.get("beta") is None and sc.get("alpha") is None and sc.get("blis") is None:
            v.fail(p, "a scope needs at least one of beta, alpha, blis")
    return doc


def _validate_blis(v: _V, b: Any, path: str) -> None:
    v.obj(b, path, ["blis_version", "alpha_terms", "alpha_coeffs", "beta_terms", "beta_coeffs", "legacy_blackbox"],
          ["fit_report"])
    v.string(b["blis_version"], f"{path}.blis_version")
    v.numlist(b["alpha_coeffs"], f"{path}.alpha_coeffs", 3)
    v.numlist(b["beta_coeffs"], f"{path}.beta_coeffs")
    if not 7 <= len(b["beta_coeffs"]) <= 11:
        v.fail(f"{path}.beta_coeffs", f"BLIS accepts 7 to 11 betas, got {len(b['beta_coeffs'])}")
    for key in ("alpha_coeffs", "beta_coeffs"):
        for i, x in enumerate(b[key]):
            v.num(x, f"{path}.{key}[{i}]", ge=0)
    v.strlist(b["alpha_terms"], f"{path}.alpha_terms")
    v.strlist(b["beta_terms"], f"{path}.beta_terms")
    if len(b["beta_terms"]) != len(b["beta_coeffs"]):
        v.fail(f"{path}.beta_terms", "must name every beta coefficient")
    lb = v.obj(b["legacy_blackbox"], f"{path}.legacy_blackbox",
               ["beta_terms", "beta_coeffs", "alpha_terms", "alpha_coeffs", "alpha2_us_per_output_token"])
    v.numlist(lb["beta_coeffs"], f"{path}.legacy_blackbox.beta_coeffs", 3)
    v.numlist(lb["alpha_coeffs"], f"{path}.legacy_blackbox.alpha_coeffs", 2)
    v.num(lb["alpha2_us_per_output_token"], f"{path}.legacy_blackbox.alpha2_us_per_output_token")
    if "fit_report" in b:
        v.metrics(b["fit_report"], f"{path}.fit_report")


# =========================================================================================================
# Reference predictor
# =========================================================================================================


def _as_columns(data: Any, what: str) -> tuple[dict[str, np.ndarray], int, list]:
    """DataFrame, dict of arrays/scalars (a scalar dict is one row) -> float64 column arrays of one length."""
    if isinstance(data, pd.DataFrame):
        cols = {}
        for c in data.columns:
            s = data[c]
            if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
                cols[str(c)] = s.to_numpy(dtype="float64", na_value=np.nan)
        return cols, len(data), list(data.index)
    if isinstance(data, Mapping):
        arrays: dict[str, np.ndarray] = {}
        length = None
        for k, val in data.items():
            if isinstance(val, (str, bytes)):
                continue  # scope labels (hardware, model) are not formula inputs
            arr = np.asarray(np.nan if val is None else val, dtype="float64")
            if arr.ndim > 1:
                raise ReleasePredictError(f"{what}: column {k!r} must be a scalar or 1-D, got shape {arr.shape}")
            if arr.ndim == 1:
                if length is not None and len(arr) != length:
                    raise ReleasePredictError(f"{what}: column {k!r} has {len(arr)} rows, other columns have {length}")
                length = len(arr)
            arrays[str(k)] = arr
        n = 1 if length is None else length
        return {k: np.broadcast_to(a, (n,)).astype("float64") for k, a in arrays.items()}, n, list(range(n))
    raise ReleasePredictError(f"{what} must be a DataFrame or a dict, got {type(data).__name__}")


@dataclass
class Prediction:
    """Per-row prediction (µs), the regime with the largest gate weight, and every regime's weight."""

    value: np.ndarray
    regime: np.ndarray
    weights: dict[str, np.ndarray]


class ModelSpec:
    """One ``molerd.mole/v1`` beta or alpha spec of a scope, parsed once, evaluated vectorised over rows.

    Semantics (exactly ``MoLERegressor.to_spec``'s docstring; see docs/release-format.md):
    constants from ``scope_constants[scope_id]``; features from ``feature_catalog`` formulas; gate inputs from
    ``gate.inputs`` formulas (state inputs replaced by ``state_free.assume`` when there is no state); soft
    decision list or logistic gate; experts with a NaN output drop out and the rest are renormalised (all NaN:
    the global expert); prediction = max(prediction_floor_us, Σ w·e).
    """

    def __init__(self, spec: dict, scope: tuple[str, str, int], where: str):
        from molerd import features as fcat  # the shared feature catalog (never the estimator)

        self.spec = spec
        self.where = where
        self.target = spec["target"]
        sid = f"{scope[0]}|{scope[1]}|{int(scope[2])}"
        if sid not in spec["scope_constants"]:
            raise ReleaseFormatError(f"{where}: scope_constants has no entry {sid!r} (has {sorted(spec['scope_constants'])})")
        self.constants = {k: float(x) for k, x in spec["scope_constants"][sid].items()}
        self.raw_inputs = list(spec["raw_inputs"])
        self.regimes = list(spec["regimes"])
        cat = spec["feature_catalog"]
        self.order = _feature_order(cat, set(self.raw_inputs) | set(self.constants))
        self.trees = {k: parse_formula(f["expression"]) for k, f in cat.items()}
        self.gate_trees = {k: parse_formula(e) for k, e in spec["gate"]["inputs"].items()}
        self._fcat = fcat
        # the catalog's own function is used where the file's formula is exactly the catalog's formula
        self.catalog_fn = {k for k, f in cat.items() if k in fcat.CATALOG and fcat.CATALOG[k].expression == f["expression"]}

    # ---- evaluation steps (public so golden generation and tests can reuse them) ------------------------
    def raw_env(self, row: Any, state: Any) -> tuple[dict[str, np.ndarray], int, list]:
        cols, n, index = _as_columns(row, f"{self.where} row")
        if state is not None:
            scols, sn, _ = _as_columns(state, f"{self.where} state")
            if sn not in (1, n):
                raise ReleasePredictError(f"{self.where}: state has {sn} rows but the row data has {n}")
            cols.update({k: np.broadcast_to(a, (n,)).astype("float64") for k, a in scols.items()})
        env = {k: cols.get(k, np.full(n, np.nan)) for k in self.raw_inputs}  # absent raw input = unknown (NaN)
        return env, n, index

    def gate_inputs(self, env: Mapping[str, np.ndarray], n: int, state_free: bool) -> dict[str, np.ndarray]:
        g = {k: np.broadcast_to(eval_formula(t, env), (n,)).astype("float64") for k, t in self.gate_trees.items()}
        if state_free:
            for k, x in self.spec["state_free"]["assume"].items():
                g[k] = np.full(n, float(x))
        return g

    def gate_weights(self, g: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        gate = self.spec["gate"]
        W = np.zeros((n, len(self.regimes)))
        if gate["kind"] == "rules":
            remaining = np.ones(n)
            for r in gate["rules"]:
                x = g[r["input"]]
                nan = np.isnan(x)
                if r["width"] <= 0:
                    xx = np.where(nan, 0.0, x)
                    t = float(r["threshold"])
                    s = {">": xx > t, ">=": xx >= t, "<": xx < t, "<=": xx <= t}[r["op"]].astype("float64")
                else:
                    z = float(r["direction"]) * float(r["slope"]) * (np.where(nan, float(r["center"]), x) - float(r["center"]))
                    s = 0.5 * (1.0 + np.tanh(0.5 * z))
                s = np.where(nan, 0.0, s)
                j = self.regimes.index(r["regime"])
                W[:, j] += remaining * s
                remaining = remaining * (1.0 - s)
            W[:, self.regimes.index(gate["default_regime"])] += remaining
            return W
        names = list(gate["inputs"])
        Z = np.column_stack([g[k] for k in names]) if names else np.zeros((n, 0))
        Z = np.where(np.isnan(Z), np.asarray(gate["median"], dtype="float64"), Z)
        Z = (Z - np.asarray(gate["mean"], dtype="float64")) / np.asarray(gate["scale"], dtype="float64")
        classes = gate["classes"]
        if len(classes) == 1:
            W[:, self.regimes.index(classes[0])] = 1.0
            return W
        coef, b = np.asarray(gate["coef"], dtype="float64"), np.asarray(gate["intercept"], dtype="float64")
        if len(classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-(Z @ coef[0] + b[0])))
            P = np.column_stack([1.0 - p1, p1])
        else:
            L = Z @ coef.T + b
            L = L - L.max(axis=1, keepdims=True)
            E = np.exp(L)
            P = E / E.sum(axis=1, keepdims=True)
        for j, c in enumerate(classes):
            W[:, self.regimes.index(c)] = P[:, j]
        return W

    def features(self, env: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        const = {k: np.full(n, x) for k, x in self.constants.items()}
        base = {**env, **const}
        feats: dict[str, np.ndarray] = {}
        scope = ChainMap(base, feats)  # raw inputs and constants shadow features of the same name
        with np.errstate(all="ignore"):
            for k in self.order:
                if k in self.catalog_fn:
                    f = self._fcat.CATALOG[k]
                    feats[k] = self._fcat.compute_features([k], {c: env[c] for c in f.columns}, const)[:, 0]
                else:
                    feats[k] = np.broadcast_to(eval_formula(self.trees[k], scope), (n,)).astype("float64")
        return feats

    def expert_output(self, block: Mapping, vals: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        if not block["features"]:
            return np.full(n, float(block["intercept"]))
        X = np.column_stack([vals[f] for f in block["features"]])
        return float(block["intercept"]) + X @ np.asarray(block["coef"], dtype="float64")

    def predict(self, row: Any, state: Any = None) -> Prediction:
        """Evaluate on rows. ``state=None``: no simulator state, so the gate's state inputs take
        ``state_free.assume``; otherwise ``state`` columns are merged into the rows and the gate runs as trained."""
        env, n, index = self.raw_env(row, state)
        W = self.gate_weights(self.gate_inputs(env, n, state is None), n)
        vals = self.features(env, n)
        P = np.column_stack([self.expert_output(self.spec["experts"][r], vals, n) for r in self.regimes])
        good = np.isfinite(P)
        Wg = np.where(good, W, 0.0)
        tot = Wg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pred = np.where(tot > 0, (Wg * np.where(good, P, 0.0)).sum(axis=1) / np.where(tot > 0, tot, 1.0), np.nan)
        for level in ("global_expert", "backup_expert"):  # fallback chain for rows every regime expert failed
            bad = ~np.isfinite(pred)
            if bad.any() and level in self.spec:
                pred[bad] = self.expert_output(self.spec[level], vals, n)[bad]
        bad = ~np.isfinite(pred)
        if bad.any() and "constant_us" in self.spec:
            pred[bad] = float(self.spec["constant_us"])
        bad = ~np.isfinite(pred)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            missing = [k for k in self.raw_inputs if np.isnan(env[k][i])]
            raise ReleasePredictError(
                f"{self.where}: row {index[i]!r} ({int(bad.sum())} rows in all) has non-finite features for every "
                f"expert and the global expert; its NaN/missing raw inputs: {missing}")
        pred = np.maximum(pred, float(self.spec["prediction_floor_us"]))
        regs = np.asarray(self.regimes, dtype=object)
        return Prediction(pred, regs[np.argmax(W, axis=1)], {r: W[:, j] for j, r in enumerate(self.regimes)})


def scope_key(hardware: str, model: str, tp: int) -> str:
    """Folder-safe scope name used under ``blis/`` and on the command line: ``H100_llama-3.1-8b-instruct_tp1``."""
    return f"{hardware}_{model}_tp{int(tp)}"


class Release:
    """A loaded, validated release. Evaluate it with :meth:`predict_step` and :meth:`predict_queueing`."""

    def __init__(self, doc: dict, source: str = "release.json"):
        self.doc = validate_release(doc, source)
        self.source = source
        self.version: str = doc["version"]
        self.scopes: dict[tuple[str, str, int], dict] = {}
        self._models: dict[tuple[tuple[str, str, int], str], ModelSpec] = {}
        for sc in doc["scopes"]:
            key = (sc["hardware"], sc["model"], int(sc["tp"]))
            self.scopes[key] = sc
            for target in TARGETS:
                if sc.get(target) is not None:
                    self._models[(key, target)] = ModelSpec(sc[target], key, f"{source}: scope {scope_key(*key)} {target}")

    def resolve_scope(self, scope: Any = None) -> tuple[str, str, int]:
        """Scope as (hardware, model, tp), "hw/model/tp", the folder name, or None when there is only one."""
        if scope is None:
            if len(self.scopes) == 1:
                return next(iter(self.scopes))
            raise ReleasePredictError(f"{self.source}: several scopes, pass scope=; known: {self.scope_names()}")
        if isinstance(scope, str):
            for key in self.scopes:
                if scope in (scope_key(*key), f"{key[0]}/{key[1]}/{key[2]}"):
                    return key
            raise ReleasePredictError(f"{self.source}: unknown scope {scope!r}; known: {self.scope_names()}")
        key = (str(scope[0]), str(scope[1]), int(scope[2]))
        if key not in self.scopes:
            raise ReleasePredictError(f"{self.source}: unknown scope {key}; known: {self.scope_names()}")
        return key

    def scope_names(self) -> list[str]:
        return [scope_key(*k) for k in self.scopes]

    def model(self, target: str, scope: Any = None) -> ModelSpec:
        key = self.resolve_scope(scope)
        if (key, target) not in self._models:
            raise ReleasePredictError(f"{self.source}: scope {scope_key(*key)} has no {target} model")
        return self._models[(key, target)]

    def predict_step(self, batch: Any, state: Any = None, scope: Any = None, *, details: bool = False):
        """Step time (µs) per batch row; ``state=None`` uses the release's state-free default."""
        p = self.model("beta", scope).predict(batch, state)
        return p if details else p.value

    def predict_queueing(self, request: Any, state: Any = None, scope: Any = None, *, details: bool = False):
        """MoLE-RD alpha (the seed's scheduled − queued delay, µs) per request row."""
        p = self.model("alpha", scope).predict(request, state)
        return p if details else p.value


def load(path_or_dir: str | Path) -> Release:
    """Load ``release.json`` (or a release directory) and validate it; never executes anything from the file."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / "release.json"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ReleaseFormatError(f"{p}: no such release file") from exc
    try:
        doc = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ReleaseFormatError(f"{p}: {c} is not allowed")))
    except json.JSONDecodeError as exc:
        raise ReleaseFormatError(f"{p}: not valid JSON: {exc}") from exc
    return Release(doc, str(p))


# =========================================================================================================
# Building releases
# =========================================================================================================


def build_scope(hardware: str, model: str, tp: int, *, beta: Mapping | None = None, alpha: Mapping | None = None,
                blis: Any = None, metrics: Mapping | None = None) -> dict:
    """One scope entry. ``beta``/``alpha`` are ``MoLERegressor.to_spec()`` dicts (or an estimator: its
    ``to_spec()`` is called); ``blis`` a :class:`molerd.blis.BlisBlock` or its dict."""
    def spec_of(x: Any) -> dict | None:
        if x is None:
            return None
        return json.loads(json.dumps(x.to_spec() if hasattr(x, "to_spec") else x))
    return {"hardware": str(hardware), "model": str(model), "tp": int(tp), "beta": spec_of(beta),
            "alpha": spec_of(alpha), "blis": blis.to_dict() if hasattr(blis, "to_dict") else blis,
            "metrics": dict(metrics or {})}


def build_release(version: str, scopes: Sequence[Mapping[str, Any]], *, provenance: Mapping | None = None,
                  metrics: Mapping | None = None, previous_release: Mapping | None = None,
                  created_utc: str | None = None) -> dict:
    """The release document, validated (strictly) and made plain JSON. Nothing with a timestamp unless given."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT_NAME,
        "version": version,
        "created_utc": created_utc,
        "provenance": dict(provenance or {}),
        "metrics": dict(metrics or {}),
        "previous_release": dict(previous_release) if previous_release else None,
        "scopes": [{k: v for k, v in dict(s).items() if v is not None} for s in scopes],
    }
    doc = json.loads(json.dumps(doc, allow_nan=False))
    Release(doc, f"release {version}")  # validates, and checks every scope's constants resolve
    return doc


# =========================================================================================================
# Golden vectors
# =========================================================================================================

_RANGES = {"kv_usage_ratio": (0.0, 1.0), "kv_fragmentation_ratio": (0.0, 1.0), "cpu_offload": (0.0, 1.0),
           "block_size": (16.0, 16.0), "max_num_seqs": (256.0, 256.0), "max_num_batched_tokens": (8192.0, 8192.0),
           "prompt_tokens": (1.0, 8192.0), "prefill_tokens": (0.0, 4096.0), "decode_tokens": (0.0, 256.0),
           "num_prefill_reqs": (0.0, 4.0), "num_decode_reqs": (0.0, 256.0), "running_depth": (0.0, 256.0),
           "waiting_depth": (0.0, 16.0), "num_preempted": (0.0, 2.0), "recent_preemptions": (0.0, 2.0),
           "num_preemptions": (0.0, 2.0), "num_evictions": (0.0, 8.0), "sum_decode_context": (0.0, 5e5),
           "sum_prefill_attention": (0.0, 8e6), "avg_service_time_us": (1e3, 5e6), "offload_transfer_us": (0.0, 500.0),
           "cached_prompt_tokens": (0.0, 4096.0)}
_INTEGER = {"prompt_tokens", "prefill_tokens", "decode_tokens", "num_prefill_reqs", "num_decode_reqs", "running_depth",
            "waiting_depth", "num_preempted", "recent_preemptions", "num_preemptions", "num_evictions",
            "cached_prompt_tokens", "cpu_offload"}


def _sample_rows(m: ModelSpec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    pts = {}
    for name in m.raw_inputs:
        lo, hi = _RANGES.get(name, (0.0, 100.0))
        x = rng.uniform(lo, hi, n)
        pts[name] = np.round(x) if name in _INTEGER else x
    if "prefill_tokens" in pts:  # reach every prefill-ratio regime: pure decode, pure prefill, mixes
        mode = rng.integers(0, 4, n)
        pts["prefill_tokens"] = np.where(mode == 0, 0.0, pts["prefill_tokens"])
        pts["decode_tokens"] = np.where(mode == 1, 0.0, pts["decode_tokens"])
        pts["prefill_tokens"] = np.where(mode == 2, np.round(pts["decode_tokens"] * rng.uniform(0.5, 2.0, n)),
                                         pts["prefill_tokens"])
    if "kv_usage_ratio" in pts:
        pts["kv_usage_ratio"] = np.where(rng.random(n) < 0.3, rng.uniform(0.8, 1.0, n), pts["kv_usage_ratio"])
    if "cached_prompt_tokens" in pts and "prompt_tokens" in pts:
        pts["cached_prompt_tokens"] = np.minimum(pts["cached_prompt_tokens"], pts["prompt_tokens"])
    return pts


def _golden_case(m: ModelSpec, scope: tuple, target: str, kind: str, row: dict, state_free: bool) -> dict:
    p = m.predict({k: [v] for k, v in row.items()}, None if state_free else {})
    return {"scope": {"hardware": scope[0], "model": scope[1], "tp": scope[2]}, "target": target, "kind": kind,
            "row": {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in row.items()},
            "state_free": state_free, "expected": float(p.value[0]), "regime": str(p.regime[0]),
            "weights": {r: float(w[0]) for r, w in p.weights.items()}}


# gate input -> the raw input moved to put it on a rule boundary
_MOVE = {"prefill_ratio": "prefill_tokens", "kv_usage_ratio": "kv_usage_ratio", "queue_depth": "waiting_depth",
         "recent_preemptions": None}


def _boundary_value(m: ModelSpec, row: dict, gate_input: str, raw: str, target_value: float) -> float | None:
    """Raw value that puts ``gate_input`` (a formula over raw inputs) at ``target_value`` (bisection)."""
    tree = m.gate_trees[gate_input]

    def g(x: float) -> float:
        env = {k: np.array([v if v is not None else np.nan]) for k, v in row.items()}
        env[raw] = np.array([x])
        return float(np.ravel(eval_formula(tree, env))[0]) - target_value

    lo, hi = 0.0, max(_RANGES.get(raw, (0.0, 100.0))[1], 1.0) * 4
    flo, fhi = g(lo), g(hi)
    if not (np.isfinite(flo) and np.isfinite(fhi)) or flo * fhi > 0:
        return None
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        fm = g(mid)
        if fm == 0:
            return mid
        if (fm > 0) == (flo > 0):
            lo, flo = mid, fm
        else:
            hi = mid
    return lo if abs(g(lo)) <= abs(g(hi)) else hi


def make_golden(release: "Release", *, per_regime: int = 3, seed: int = 0, n_candidates: int = 600) -> dict:
    """Inputs -> expected outputs (reference predictor) for every scope and target of ``release``.

    Cases: ``regime_sample`` (up to ``per_regime`` random rows whose largest gate weight is each regime),
    ``state_free`` (the same rows without state: gate state inputs = ``state_free.assume``), and for every
    rule of a decision-list gate ``boundary_threshold`` (the gate input exactly on the threshold, where a hard
    rule switches), ``boundary_center`` (the soft rule's half-way point), and ±1e-6 / ± width/2 around them.
    Deterministic for a given release and seed.
    """
    rng = np.random.default_rng(seed)
    cases: list[dict] = []
    for key in release.scopes:
        for target in TARGETS:
            if (key, target) not in release._models:
                continue
            m = release._models[(key, target)]
            pts = _sample_rows(m, n_candidates, rng)
            env, n, _ = m.raw_env(pts, {})
            W = m.gate_weights(m.gate_inputs(env, n, False), n)
            pick = W.argmax(axis=1)
            rows_taken: list[dict] = []
            for j, r in enumerate(m.regimes):
                for i in np.flatnonzero(pick == j)[:per_regime]:
                    row = {k: float(pts[k][i]) for k in m.raw_inputs}
                    cases.append(_golden_case(m, key, target, "regime_sample", row, False))
                    rows_taken.append(row)
            for row in rows_taken[:: max(1, len(rows_taken) // 4)][:4]:
                cases.append(_golden_case(m, key, target, "state_free", row, True))
            gate = m.spec["gate"]
            if gate["kind"] != "rules" or not rows_taken:
                continue
            # a base row with both prefill and decode work puts prefill-ratio boundaries at realistic token counts
            base = next((r_ for r_ in rows_taken if r_.get("prefill_tokens", 1) > 0 and r_.get("decode_tokens", 1) > 0),
                        rows_taken[0])
            for rule in gate["rules"]:
                raw = _MOVE.get(rule["input"])
                if raw is None:  # pick the raw input the gate formula reads
                    refs = sorted(formula_names(m.gate_trees[rule["input"]]))
                    raw = refs[0] if refs else None
                if raw is None or raw not in m.raw_inputs:
                    continue
                points = {"boundary_threshold": float(rule["threshold"]), "boundary_center": float(rule["center"])}
                if rule["width"] > 0:
                    points["boundary_center_minus_half_width"] = float(rule["center"]) - 0.5 * float(rule["width"])
                    points["boundary_center_plus_half_width"] = float(rule["center"]) + 0.5 * float(rule["width"])
                for kind, gv in points.items():
                    x = _boundary_value(m, base, rule["input"], raw, gv)
                    if x is None:
                        continue
                    for suffix, dx in (("", 0.0), ("_below", -max(abs(x), 1.0) * 1e-6), ("_above", max(abs(x), 1.0) * 1e-6)):
                        if kind != "boundary_threshold" and suffix:
                            continue
                        row = dict(base)
                        row[raw] = x + dx
                        if not np.isfinite(row[raw]) or row[raw] < 0:
                            continue
                        cases.append(_golden_case(m, key, target, f"{kind}{suffix}:{rule['regime']}", row, False))
    return {"schema_version": SCHEMA_VERSION, "format": GOLDEN_FORMAT, "release_version": release.version,
            "tolerance_rel": GOLDEN_RTOL, "cases": cases}


def check_golden(release: "Release", golden: Mapping, *, rtol: float = GOLDEN_RTOL) -> list[str]:
    """Re-evaluate every golden case with the reference predictor; returns mismatches (empty = all agree)."""
    if golden.get("format") != GOLDEN_FORMAT:
        raise ReleaseFormatError(f"golden file format must be {GOLDEN_FORMAT!r}, got {golden.get('format')!r}")
    bad = []
    for i, c in enumerate(golden["cases"]):
        sc = c["scope"]
        m = release.model(c["target"], (sc["hardware"], sc["model"], sc["tp"]))
        p = m.predict({k: [np.nan if v is None else v] for k, v in c["row"].items()}, None if c["state_free"] else {})
        got, exp = float(p.value[0]), float(c["expected"])
        if not abs(got - exp) <= rtol * max(abs(exp), 1e-300):
            bad.append(f"case {i} ({c['kind']}, {c['target']}): expected {exp!r}, got {got!r}")
    return bad


def golden_rows(golden: Mapping, target: str, scope: tuple[str, str, int] | None = None) -> pd.DataFrame:
    """The golden cases of one target as a canonical-looking table (with hardware/model/tp), for checking an
    estimator's ``predict`` against the file; ``state_free`` cases are excluded (estimators see state)."""
    recs = []
    for c in golden["cases"]:
        if c["target"] != target or c["state_free"]:
            continue
        key = (c["scope"]["hardware"], c["scope"]["model"], c["scope"]["tp"])
        if scope is not None and key != tuple(scope):
            continue
        recs.append({"hardware": key[0], "model": key[1], "tp": key[2],
                     **{k: (np.nan if v is None else v) for k, v in c["row"].items()}, "expected": c["expected"]})
    return pd.DataFrame(recs)
