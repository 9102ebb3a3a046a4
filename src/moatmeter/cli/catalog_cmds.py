"""`moatmeter catalog …`: list, show, validate and extend the cited catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich import box
from rich.table import Table

from moatmeter.catalog.load import KINDS, resolve_user_dir, validate_dir
from moatmeter.catalog.modelarch import arch_of
from moatmeter.cli.common import CatalogOpt, JsonOpt, console, get_catalog, print_json
from moatmeter.errors import InputError

catalog_app = typer.Typer(
    help="The cited catalog: accelerators, models, software stacks and cost parameters.\n\n"
    "Example:  moatmeter catalog list accelerators --json",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")


def _srcs(e: Any) -> str:
    return "; ".join(f"{s.ref} ({s.date})" for s in e.sources)


def entry_record(kind: str, e: Any) -> dict[str, Any]:
    """The JSON form of an entry; models gain their derived totals."""
    rec = e.model_dump(mode="json")
    if kind == "models":
        a = arch_of(e)
        rec["total_params"] = a.total_params
        rec["active_params"] = a.active_params
        rec["kv_bytes_per_token"] = {d: a.kv_bytes_per_token(d) for d in ("bf16", "fp8")}
        rec["architecture"] = {
            "layers": a.layers, "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads,
            "head_dim": a.head_dim, "moe_experts": a.n_experts,
            "experts_per_token": a.experts_per_token, "mla": a.is_mla,
            "sliding_window": a.sliding_window,
        }
    return rec


def _fmt(v: float | None, nd: int = 0) -> str:
    return "" if v is None else f"{v:,.{nd}f}"


def _table(title: str, cols: list[tuple[str, dict[str, Any]]], caption: str = "",
           expand: bool = False) -> Table:
    """A compact table that stays readable at 120 columns: ids never wrap, numbers align right."""
    t = Table(title=title, box=box.SIMPLE_HEAD, caption=caption or None, pad_edge=False,
              caption_justify="left", padding=(0, 1), collapse_padding=True, expand=expand)
    for name, kw in cols:
        t.add_column(name, **kw)
    return t


_ID = {"no_wrap": True, "style": "bold"}
_NUM = {"justify": "right", "no_wrap": True}
_FORM = {"datacenter": "dc", "workstation": "ws", "consumer": "cons"}
_CONF = {"datasheet": "sheet", "derived": "deriv", "estimate": "est"}
# Feature flags in the stacks table: upper case = yes, lower case + mark = partial (~) or
# experimental (?), absent = no. Order follows schema.FEATURES.
_FEAT = {"continuous_batching": "CB", "paged_attention": "PA", "flash_attention": "FA",
         "chunked_prefill": "CP", "tensor_parallel": "TP", "pipeline_parallel": "PP",
         "speculative_decoding": "SD", "prefix_caching": "PC"}


def _acc_table(entries: list[Any]) -> Table:
    t = _table(f"accelerators ({len(entries)})", [
        ("id", _ID), ("vendor", {}), ("family", {"no_wrap": True}), ("form", {}),
        ("mem GB", _NUM), ("BW GB/s", _NUM), ("bf16 TF", _NUM), ("fp8 TF", _NUM),
        ("TDP W", _NUM), ("price $", _NUM), ("conf.", {})],
        caption="dense peaks per device (TFLOPS); form: dc datacenter, ws workstation, cons "
                "consumer; conf.: datasheet, derived or estimate; `catalog show ID` gives "
                "sources, notes and scale-up links")
    for e in entries:
        p = e.peak_tflops
        t.add_row(e.id, e.vendor, e.family, _FORM[e.form_factor], _fmt(e.memory_gb),
                  _fmt(e.memory_bw_gbs), _fmt(p.get("bf16", p.get("fp16"))), _fmt(p.get("fp8")),
                  _fmt(e.tdp_w), _fmt(e.price_usd), _CONF[e.confidence])
    return t


def _model_table(entries: list[Any]) -> Table:
    t = _table(f"models ({len(entries)})", [
        ("id", _ID), ("hf_id", {"overflow": "ellipsis", "max_width": 40}), ("total B", _NUM),
        ("active B", _NUM), ("layers", _NUM), ("kv heads", _NUM), ("KV kB/tok bf16", _NUM)])
    for e in entries:
        a = arch_of(e)
        t.add_row(e.id, e.hf_id, f"{a.total_params / 1e9:.2f}", f"{a.active_params / 1e9:.2f}",
                  str(a.layers), str(a.kv_heads), f"{a.kv_bytes_per_token('bf16') / 1e3:.1f}")
    return t


def _feature_flags(e: Any) -> str:
    out = []
    for f, ab in _FEAT.items():
        lvl = e.features[f].level
        if lvl == "yes":
            out.append(ab)
        elif lvl == "partial":
            out.append(ab.lower() + "~")
        elif lvl == "experimental":
            out.append(ab.lower() + "?")
    return " ".join(out)


def _stack_table(entries: list[Any]) -> Table:
    t = _table(f"stacks ({len(entries)})", [
        ("id", _ID), ("maturity", {}), ("official on", {"max_width": 34}),
        ("weights", {"max_width": 22}), ("features", {"min_width": 23})],
        caption="features: CB continuous batching, PA paged attention, FA flash attention, "
                "CP chunked prefill, TP/PP tensor/pipeline parallel, SD speculative decoding, "
                "PC prefix caching; lower case~ partial, ? experimental, absent = no")
    for e in entries:
        official = sorted({f for h in e.hardware if h.level == "official" for f in h.families})
        t.add_row(e.id, e.maturity, " ".join(official) or "-",
                  " ".join(e.weight_dtypes), _feature_flags(e))
    return t


def _cost_table(entries: list[Any]) -> Table:
    t = _table(f"costs ({len(entries)})", [
        ("id", _ID), ("value", _NUM), ("unit", {"no_wrap": True}), ("low", _NUM),
        ("high", _NUM), ("est.", {}), ("source", {"no_wrap": True, "overflow": "ellipsis",
                                                  "ratio": 1})], expand=True)
    for e in entries:
        t.add_row(e.id, f"{e.value:g}", e.unit, f"{e.low:g}", f"{e.high:g}",
                  "est." if e.estimate else "", f"{e.sources[0].date} {e.sources[0].ref}")
    return t


_TABLES = {"accelerators": _acc_table, "models": _model_table, "stacks": _stack_table,
           "costs": _cost_table}


@catalog_app.command("list")
def list_cmd(
    kind: Annotated[str, typer.Argument(help="accelerators, models, stacks or costs")],
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """List the entries of one kind with their key figures (a table, or JSON with --json).

    A user catalog (--catalog DIR or $MOATMETER_CATALOG) adds entries, replacing bundled ids.

    Its files are accelerators.yaml, models.yaml, stacks.yaml and costs.yaml, as bundled.

    JSON carries every field of each entry, including its `sources`.

    Example:  moatmeter catalog list accelerators --json --catalog ~/my-catalog
    """
    if kind not in KINDS:
        raise InputError(f"unknown kind '{kind}' (choose from: {', '.join(KINDS)})")
    cat = get_catalog(catalog)
    entries = list(cat.table(kind).values())
    if json_out:
        print_json([entry_record(kind, e) for e in entries])
        return
    console.print(_TABLES[kind](entries))


@catalog_app.command("show")
def show_cmd(
    entry_id: Annotated[str, typer.Argument(help="id of any catalog entry")],
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Show one entry in full, with every source and the file it came from.

    Example:  moatmeter catalog show h100-sxm
    """
    cat = get_catalog(catalog)
    kind, e = cat.find(entry_id)
    rec = entry_record(kind, e)
    if json_out:
        print_json(rec)
        return
    console.print(f"[bold]{entry_id}[/] ({kind[:-1]}, from {cat.origin[(kind, entry_id)]})")
    rec["sources"] = rec.pop("sources")  # figures first, their sources last
    console.print(yaml.safe_dump(rec, sort_keys=False, allow_unicode=True, width=100),
                  highlight=False, markup=False)


@catalog_app.command("validate")
def validate_cmd(
    directory: Annotated[
        Path | None, typer.Argument(help="catalog directory; default: the bundled catalog")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a catalog directory: schema, units, ranges, duplicates, families, model configs.

    Prints the entry counts, or one line naming the file, entry and field (exit code 2).

    Example:  moatmeter catalog validate ~/my-catalog
    """
    from moatmeter.catalog.load import bundled_dir

    counts = validate_dir(directory or bundled_dir())
    if json_out:
        print_json({"ok": True, "counts": counts})
    else:
        console.print("catalog OK: " + ", ".join(f"{n} {k}" for k, n in counts.items()))


@catalog_app.command("import-hf")
def import_hf_cmd(
    config_json: Annotated[
        Path, typer.Argument(help="a Hugging Face config.json, or the model folder holding it")
    ],
    model_id: Annotated[
        str | None, typer.Option("--id", help="catalog id (default: the folder name, lowercased)")
    ] = None,
    hf_id: Annotated[str | None, typer.Option("--hf-id", help="Hugging Face repo id")] = None,
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Add a model to your catalog from a local config.json, offline, with its derived totals.

    Writes DIR/models.yaml (--catalog DIR or $MOATMETER_CATALOG), replacing an entry of the same id.

    A config missing a field the derivation needs is refused, naming that field.

    Example:  moatmeter catalog import-hf ./Llama-3.1-8B/config.json --catalog ~/my-catalog
    """
    from moatmeter.catalog.modelarch import import_hf

    udir = catalog if catalog is not None else resolve_user_dir(None)
    if udir is None:
        raise InputError("name a user catalog directory with --catalog DIR or $MOATMETER_CATALOG")
    entry, arch = import_hf(config_json, udir, model_id=model_id, hf_id=hf_id)
    if json_out:
        print_json(entry_record("models", entry))
        return
    moe = (f", {arch.n_experts} experts, top-{arch.experts_per_token}" if arch.is_moe else "")
    console.print(f"added model [bold]{entry.id}[/] ({arch.total_params / 1e9:.2f} B params, "
                  f"{arch.active_params / 1e9:.2f} B active{moe}, "
                  f"KV {arch.kv_bytes_per_token('bf16') / 1e3:.1f} kB/token bf16) "
                  f"to {Path(udir) / 'models.yaml'}")
