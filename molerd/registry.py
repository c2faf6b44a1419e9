"""The release registry: immutable versioned release directories under a root (default ``data/releases``).

Layout: ``<root>/<version>/`` holds ``release.json``, ``metrics.json``, ``gate.json``, ``golden.json``,
``blis/<scope>/defaults.snippet.yaml``, ``blis/<scope>/flags.txt`` and ``MANIFEST.json`` (sha256 of every
other file); ``<root>/current`` is a plain file naming the promoted version.

Safety: a version is written to a temp directory in the same root, fsynced, then renamed into place (so a
reader never sees half a release, and any failure leaves the registry as it was); an existing version is
never overwritten; ``current`` is replaced atomically (temp file + ``os.replace``); an ``fcntl`` lock on
``<root>/.lock`` serialises writers across processes. Loading verifies every checksum.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from molerd import blis as blis_mod
from molerd import release as rel
from molerd.paths import releases_dir

MANIFEST = "MANIFEST.json"
CURRENT = "current"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class RegistryError(ValueError):
    """A registry operation cannot be done (names the root, version and rule)."""


def default_root() -> Path:
    return releases_dir()


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fsync_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version == CURRENT:
        raise RegistryError(f"bad release version {version!r}: use letters, digits and . _ + - (not 'current')")


def release_files(doc: Mapping, *, golden: Mapping, metrics: Mapping | None = None,
                  gate_report: Mapping | None = None) -> dict[str, bytes]:
    """Every file of a release directory (relative path -> bytes), MANIFEST.json excluded."""
    files = {
        "release.json": _json_bytes(doc),
        "golden.json": _json_bytes(golden),
        "metrics.json": _json_bytes(dict(metrics if metrics is not None else doc.get("metrics", {}))),
        "gate.json": _json_bytes(dict(gate_report or {"decision": "not recorded"})),
    }
    for sc in doc["scopes"]:
        if sc.get("blis") is None:
            continue
        block = blis_mod.BlisBlock.from_dict(sc["blis"])
        d = f"blis/{rel.scope_key(sc['hardware'], sc['model'], sc['tp'])}"
        files[f"{d}/defaults.snippet.yaml"] = blis_mod.snippet_yaml(block).encode()
        files[f"{d}/flags.txt"] = (blis_mod.flags_string(block) + "\n").encode()
    return files


def publish_release(root: str | Path | None, version: str, release_doc: Mapping, *, golden: Mapping | None = None,
                    metrics: Mapping | None = None, gate_report: Mapping | None = None,
                    extra_files: Mapping[str, bytes] | None = None, make_current: bool = True) -> Path:
    """Write release ``version`` atomically; returns its directory. Refuses to overwrite an existing version.

    ``release_doc`` is a release document (``molerd.release.build_release``); its ``version`` must equal
    ``version``. ``golden`` defaults to ``make_golden`` of the release. ``extra_files`` (relative path ->
    bytes, e.g. the report and the evaluation it was drawn from) are published, and checksummed, with it.
    Any error (including disk full) leaves the registry exactly as it was.
    """
    root = Path(root) if root is not None else default_root()
    with _lock(root):
        return _publish_locked(root, version, release_doc, golden=golden, metrics=metrics, gate_report=gate_report,
                               extra_files=extra_files, make_current=make_current)


def publish_next(root: str | Path | None, prefix: str,
                 build: Callable[[str], tuple[Mapping, dict[str, Any]]], make_current: bool = True) -> Path:
    """Publish under the next free version ``<prefix><n>``, chosen while holding the registry lock, so two
    pipeline runs at the same time get two different versions. ``build(version)`` returns the release
    document and the keyword arguments of :func:`publish_release` (golden, metrics, gate_report, extra_files)."""
    root = Path(root) if root is not None else default_root()
    with _lock(root):
        version = next_version(root, prefix)
        doc, files = build(version)
        return _publish_locked(root, version, doc, make_current=make_current, **files)


def next_version(root: str | Path | None, prefix: str = "v") -> str:
    """``<prefix><n>`` with n one above the largest number already used with that prefix (1 for none)."""
    root = Path(root) if root is not None else default_root()
    pat = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    used = [int(m.group(1)) for p in (root.iterdir() if root.exists() else []) if (m := pat.match(p.name))]
    version = f"{prefix}{max(used, default=0) + 1}"
    _check_version(version)
    return version


def _publish_locked(root: Path, version: str, release_doc: Mapping, *, golden: Mapping | None = None,
                    metrics: Mapping | None = None, gate_report: Mapping | None = None,
                    extra_files: Mapping[str, bytes] | None = None, make_current: bool = True) -> Path:
    _check_version(version)
    if release_doc.get("version") != version:
        raise RegistryError(f"release document says version {release_doc.get('version')!r}, publishing as {version!r}")
    loaded = rel.Release(json.loads(json.dumps(release_doc)), f"release {version}")
    golden = golden if golden is not None else rel.make_golden(loaded)
    files = release_files(release_doc, golden=golden, metrics=metrics, gate_report=gate_report)
    for relpath, data in (extra_files or {}).items():
        if relpath in files or relpath == MANIFEST or Path(relpath).is_absolute() or ".." in Path(relpath).parts:
            raise RegistryError(f"extra release file {relpath!r} clashes with a release file or leaves the release")
        files[relpath] = bytes(data)
    final = root / version
    if final.exists():
        raise RegistryError(f"{root}: release {version!r} already exists; releases are immutable, pick a new version")
    for stale in root.glob(".tmp-*"):  # left by a writer that was killed; we hold the lock, so nobody owns it
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=root))
    try:
        manifest = {}
        for relpath, data in sorted(files.items()):
            _fsync_write(tmp / relpath, data)
            manifest[relpath] = hashlib.sha256(data).hexdigest()
        _fsync_write(tmp / MANIFEST, _json_bytes({"schema_version": rel.SCHEMA_VERSION, "version": version,
                                                   "sha256": manifest}))
        for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda p: -len(p.parts)):
            _fsync_dir(d)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_current:
        _write_current(root, version)
    return final


def _write_current(root: Path, version: str) -> None:
    fd, tmpname = tempfile.mkstemp(prefix=".current-", dir=root)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmpname, root / CURRENT)
        _fsync_dir(root)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmpname)
        raise


def current_version(root: str | Path | None = None) -> str | None:
    """The promoted version named by ``<root>/current``, or None when nothing was promoted yet."""
    root = Path(root) if root is not None else default_root()
    try:
        v = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return v or None


def list_releases(root: str | Path | None = None) -> list[dict[str, Any]]:
    """Every published version (sorted by name) with whether it is current and its scopes."""
    root = Path(root) if root is not None else default_root()
    cur = current_version(root)
    out = []
    if not root.exists():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (d / "release.json").exists():
            continue
        doc = json.loads((d / "release.json").read_text())
        out.append({"version": d.name, "current": d.name == cur, "created_utc": doc.get("created_utc"),
                    "scopes": [rel.scope_key(s["hardware"], s["model"], s["tp"]) for s in doc.get("scopes", [])]})
    return out


def verify_release(path: str | Path) -> None:
    """Check every file against MANIFEST.json; raises RegistryError naming the first file that differs."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: no {MANIFEST}; not a registry release") from exc
    if manifest.get("schema_version", 0) > rel.SCHEMA_VERSION:
        raise RegistryError(f"{path / MANIFEST}: schema_version {manifest['schema_version']} is newer than this "
                            f"reader's {rel.SCHEMA_VERSION}; upgrade molerd")
    for relpath, digest in manifest["sha256"].items():
        f = path / relpath
        if not f.exists():
            raise RegistryError(f"{f}: listed in {MANIFEST} but missing")
        if _sha256(f) != digest:
            raise RegistryError(f"{f}: sha256 mismatch with {MANIFEST} (file changed or corrupted)")
    extra = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                   if p.is_file() and p.name != MANIFEST and str(p.relative_to(path)) not in manifest["sha256"])
    if extra:
        raise RegistryError(f"{path}: file(s) not in {MANIFEST}: {extra}")


def _version_dir(root: Path, version: str | None) -> Path:
    if version is None or version == CURRENT:
        version = current_version(root)
        if version is None:
            raise RegistryError(f"{root}: no current release")
    d = root / version
    if not (d / "release.json").exists():
        raise RegistryError(f"{root}: no release {version!r}; known: {[r['version'] for r in list_releases(root)]}")
    return d


def load_release(root: str | Path | None = None, version: str | None = None) -> rel.Release:
    """Verify checksums, then load and validate ``version`` (default: current)."""
    root = Path(root) if root is not None else default_root()
    d = _version_dir(root, version)
    verify_release(d)
    return rel.load(d)


def show_release(root: str | Path | None = None, version: str | None = None) -> dict[str, Any]:
    """Summary of one release: provenance, metrics, per-scope BLIS coefficients and MoLE regimes."""
    r = load_release(root, version)
    doc = r.doc
    scopes = []
    for sc in doc["scopes"]:
        scopes.append({
            "scope": rel.scope_key(sc["hardware"], sc["model"], sc["tp"]),
            "metrics": sc.get("metrics", {}),
            "blis": None if sc.get("blis") is None else {"alpha_coeffs": sc["blis"]["alpha_coeffs"],
                                                         "beta_coeffs": sc["blis"]["beta_coeffs"]},
            "beta_regimes": None if sc.get("beta") is None else sc["beta"]["regimes"],
            "alpha_regimes": None if sc.get("alpha") is None else sc["alpha"]["regimes"],
        })
    return {"version": r.version, "current": r.version == current_version(root if root is not None else default_root()),
            "provenance": doc.get("provenance", {}), "metrics": doc.get("metrics", {}),
            "previous_release": doc.get("previous_release"), "scopes": scopes}


def _coeffs(doc: Mapping) -> dict[str, float]:
    """Flat name -> value of every coefficient in a release (for diffs)."""
    out: dict[str, float] = {}
    for sc in doc["scopes"]:
        k = rel.scope_key(sc["hardware"], sc["model"], sc["tp"])
        if sc.get("blis"):
            for i, v in enumerate(sc["blis"]["alpha_coeffs"]):
                out[f"{k}.blis.alpha[{i}]"] = v
            for name, v in zip(sc["blis"]["beta_terms"], sc["blis"]["beta_coeffs"]):
                out[f"{k}.blis.beta.{name}"] = v
        for target in ("beta", "alpha"):
            spec = sc.get(target)
            if not spec:
                continue
            for r, e in spec["experts"].items():
                out[f"{k}.{target}.{r}.intercept"] = e["intercept"]
                for f, c in zip(e["features"], e["coef"]):
                    out[f"{k}.{target}.{r}.{f}"] = c
            if spec["gate"]["kind"] == "rules":
                for rule in spec["gate"]["rules"]:
                    out[f"{k}.{target}.gate.{rule['regime']}.threshold"] = rule["threshold"]
    return out


def _flat_metrics(d: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(_flat_metrics(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix.rstrip(".")] = d
    return out


def diff_releases(a: str, b: str, root: str | Path | None = None) -> dict[str, Any]:
    """Coefficient and metric differences between versions ``a`` and ``b`` (b − a)."""
    ra, rb = load_release(root, a), load_release(root, b)

    def diff(x: dict, y: dict) -> list[dict]:
        rows = []
        for k in sorted(set(x) | set(y)):
            va, vb = x.get(k), y.get(k)
            if va != vb:
                rows.append({"name": k, "a": va, "b": vb,
                             "delta": (vb - va) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None})
        return rows

    metrics_a = _flat_metrics({"release": ra.doc.get("metrics", {}),
                               **{rel.scope_key(s["hardware"], s["model"], s["tp"]): s.get("metrics", {}) for s in ra.doc["scopes"]}})
    metrics_b = _flat_metrics({"release": rb.doc.get("metrics", {}),
                               **{rel.scope_key(s["hardware"], s["model"], s["tp"]): s.get("metrics", {}) for s in rb.doc["scopes"]}})
    return {"a": a, "b": b, "coefficients": diff(_coeffs(ra.doc), _coeffs(rb.doc)), "metrics": diff(metrics_a, metrics_b)}


def rollback(root: str | Path | None, version: str) -> str | None:
    """Point ``current`` at an existing, checksum-verified ``version``; returns the previous current."""
    root = Path(root) if root is not None else default_root()
    _check_version(version)
    with _lock(root):
        d = _version_dir(root, version)
        verify_release(d)
        rel.load(d)
        previous = current_version(root)
        _write_current(root, version)
    return previous


def export_blis(root: str | Path | None, version: str | None, scope: str, *, snippet: bool = False) -> str:
    """The flags string (or with ``snippet`` the defaults.yaml snippet) of one scope of a verified release."""
    root = Path(root) if root is not None else default_root()
    d = _version_dir(root, version)
    verify_release(d)
    r = rel.load(d)
    key = r.resolve_scope(scope)
    f = d / "blis" / rel.scope_key(*key) / ("defaults.snippet.yaml" if snippet else "flags.txt")
    if not f.exists():
        raise RegistryError(f"{d}: scope {rel.scope_key(*key)} has no BLIS block")
    return f.read_text()
