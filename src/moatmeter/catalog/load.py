"""Load the bundled catalog and overlay a user catalog directory on it, with one-line errors."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from moatmeter.catalog.schema import FAMILIES, Accelerator, CostParameter, ModelEntry, Stack
from moatmeter.errors import CatalogError

KINDS: dict[str, type[BaseModel]] = {
    "accelerators": Accelerator,
    "models": ModelEntry,
    "stacks": Stack,
    "costs": CostParameter,
}
ENV_VAR = "MOATMETER_CATALOG"
T = TypeVar("T", bound=BaseModel)


def bundled_dir() -> Path:
    return Path(str(resources.files("moatmeter.catalog") / "data"))


@dataclass
class Catalog:
    accelerators: dict[str, Accelerator] = field(default_factory=dict)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    stacks: dict[str, Stack] = field(default_factory=dict)
    costs: dict[str, CostParameter] = field(default_factory=dict)
    # (kind, id) -> file the entry came from, so errors and `catalog show` can name it.
    origin: dict[tuple[str, str], str] = field(default_factory=dict)
    user_dir: Path | None = None

    def table(self, kind: str) -> dict[str, Any]:
        if kind not in KINDS:
            raise CatalogError(f"unknown catalog kind '{kind}' (known: {', '.join(KINDS)})")
        return getattr(self, kind)

    def find(self, entry_id: str) -> tuple[str, BaseModel]:
        for kind in KINDS:
            if entry_id in self.table(kind):
                return kind, self.table(kind)[entry_id]
        every = [i for kind in KINDS for i in self.table(kind)]
        near = difflib.get_close_matches(entry_id, every, n=3, cutoff=0.6)
        hint = f" (did you mean: {', '.join(near)})" if near else " (see `moatmeter catalog list`)"
        raise CatalogError(f"no catalog entry with id '{entry_id}'{hint}")

    def get(self, kind: str, entry_id: str) -> Any:
        table = self.table(kind)
        if entry_id not in table:
            near = ", ".join(sorted(k for k in table if entry_id.lower() in k)[:5])
            hint = f" (did you mean: {near})" if near else f" (see `moatmeter catalog list {kind}`)"
            raise CatalogError(f"unknown {kind[:-1]} id '{entry_id}'{hint}")
        return table[entry_id]

    def accelerator(self, entry_id: str) -> Accelerator:
        return self.get("accelerators", entry_id)

    def model(self, entry_id: str) -> ModelEntry:
        return self.get("models", entry_id)

    def stack(self, entry_id: str) -> Stack:
        return self.get("stacks", entry_id)

    def cost(self, entry_id: str) -> CostParameter:
        return self.get("costs", entry_id)


def _first_error(err: ValidationError) -> tuple[str, str]:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
    msg = e["msg"]
    if e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] == "extra_forbidden":
        msg = "unknown field"
    msg = msg.removeprefix("Value error, ")
    return loc, msg


_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parser when present


class _StrictLoader(_SafeBase):  # type: ignore[misc,valid-type]
    """Safe loader (no Python object tags) that also refuses duplicate keys in a mapping, which
    PyYAML would otherwise resolve silently by keeping the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, list | dict):  # unhashable: let PyYAML report it
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Safe-load a YAML file, turning every failure into a one-line error naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read file: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise CatalogError("not a UTF-8 text file", file=str(path)) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no object tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        if "constructor for the tag" in problem:
            tag = problem.split("tag", 1)[1].strip(" '")
            problem = f"tag '{tag}' is not allowed (catalog files are plain YAML, loaded safely)"
        raise CatalogError(f"bad YAML{where}: {problem}", file=str(path)) from None


def parse_entries(kind: str, raw: Any, path: Path) -> list[BaseModel]:
    """Validate a list of raw entries of one kind; duplicate ids within a file are errors."""
    cls = KINDS[kind]
    if raw is None:
        return []
    if isinstance(raw, dict) and kind in raw:
        raw = raw[kind]
    if not isinstance(raw, list):
        raise CatalogError(f"expected a list of {kind} entries", file=str(path))
    out: list[BaseModel] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise CatalogError("entry is not a mapping", file=str(path), entry=f"#{i + 1}")
        entry_id = str(item.get("id", f"#{i + 1}"))
        try:
            obj = cls.model_validate(item)
        except ValidationError as exc:
            loc, msg = _first_error(exc)
            raise CatalogError(msg, file=str(path), entry=entry_id, field=loc) from None
        if obj.id in seen:  # type: ignore[attr-defined]
            raise CatalogError("duplicate id in the same file", file=str(path), entry=entry_id,
                               field="id")
        seen.add(obj.id)  # type: ignore[attr-defined]
        out.append(obj)
    return out


def _check_file_names(directory: Path) -> None:
    """A misspelt catalog file (accelerator.yaml, costs.yml) would be ignored without a word;
    unrelated YAML files (e.g. scenarios) are left alone."""
    expected = [f"{k}.yaml" for k in KINDS]
    for p in sorted(directory.iterdir()):
        if p.suffix not in (".yaml", ".yml") or p.name in expected:
            continue
        near = difflib.get_close_matches(p.stem.lower(), list(KINDS), n=1, cutoff=0.75)
        if near:
            raise CatalogError(f"not a catalog file name; did you mean {near[0]}.yaml? "
                               f"(catalog files: {', '.join(expected)})", file=str(p))


def _load_dir(cat: Catalog, directory: Path, *, require: bool) -> None:
    if not require:
        _check_file_names(directory)
    for kind in KINDS:
        path = directory / f"{kind}.yaml"
        if not path.exists():
            if require:
                raise CatalogError(f"bundled catalog file missing: {path}")
            continue
        for obj in parse_entries(kind, read_yaml(path), path):
            cat.table(kind)[obj.id] = obj  # type: ignore[attr-defined]
            cat.origin[(kind, obj.id)] = str(path)  # type: ignore[attr-defined]
    _check_models(cat, directory)


def _check_models(cat: Catalog, directory: Path) -> None:
    """Derived model totals must compute; a config missing a field is caught at load time."""
    from moatmeter.catalog.modelarch import arch_of

    for mid, m in cat.models.items():
        if cat.origin.get(("models", mid), "").startswith(str(directory)):
            arch_of(m, file=cat.origin[("models", mid)])


def _check_families(cat: Catalog) -> None:
    """Every family a stack names must be a known one: a typo would silently drop support."""
    known = set(FAMILIES) | {a.family for a in cat.accelerators.values()}
    for sid, st in cat.stacks.items():
        named = [(f"hardware.{i}.families", hw.families) for i, hw in enumerate(st.hardware)]
        named += [(f"vector_only.{i}.families", v.families) for i, v in enumerate(st.vector_only)]
        named += [(f"fp16_accumulate.{i}.families", v.families)
                  for i, v in enumerate(st.fp16_accumulate)]
        for where, fams in named:
            for fam in fams:
                if fam not in known:
                    raise CatalogError(
                        f"unknown family '{fam}' (known: {', '.join(sorted(known))})",
                        file=cat.origin.get(("stacks", sid)), entry=sid, field=where)


def resolve_user_dir(user_dir: str | Path | None) -> Path | None:
    if user_dir is None:
        env = os.environ.get(ENV_VAR)
        user_dir = env if env else None
    if user_dir is None:
        return None
    p = Path(user_dir).expanduser()
    if not p.is_dir():
        raise CatalogError(f"catalog directory does not exist: {p}")
    return p


def load_catalog(user_dir: str | Path | None = None) -> Catalog:
    """The bundled catalog, overlaid with ``user_dir`` (or $MOATMETER_CATALOG): same id replaces."""
    cat = Catalog()
    _load_dir(cat, bundled_dir(), require=True)
    udir = resolve_user_dir(user_dir)
    if udir is not None:
        cat.user_dir = udir
        _load_dir(cat, udir, require=False)
    _check_families(cat)
    return cat


def validate_dir(directory: str | Path) -> dict[str, int]:
    """Validate one catalog directory on its own (used by `catalog validate`)."""
    d = Path(directory)
    if not d.is_dir():
        raise CatalogError(f"catalog directory does not exist: {d}")
    cat = Catalog()
    _load_dir(cat, d, require=False)
    counts = {k: len(cat.table(k)) for k in KINDS}
    if d.resolve() != bundled_dir().resolve():  # a user dir may name families of bundled devices
        base = Catalog()
        _load_dir(base, bundled_dir(), require=True)
        for a in base.accelerators.values():
            cat.accelerators.setdefault(a.id, a)
    _check_families(cat)
    return counts
