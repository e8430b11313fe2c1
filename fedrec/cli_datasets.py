"""``fedrec datasets``: list, describe, download and verify the registered datasets.

Thin command-line layer over :mod:`fedrec.data.registry` and :mod:`fedrec.data.fetch`. Errors
caused by input (an unknown name, an unreachable server, a checksum mismatch) are printed as one
``error: ...`` line and exit with status 2 (so does a ``--root`` folder that does not exist);
``verify`` exits with status 1 when a file fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedrec.data import fetch as _fetch
from fedrec.data.registry import DATASETS, local_status
from fedrec.errors import FedRecError

app = typer.Typer(help="List, describe, download and verify datasets.", no_args_is_help=True,
                  add_completion=False)

def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _status(where: str, root: Path | None) -> str:
    """Label of a :func:`~fedrec.data.registry.local_status` location."""
    if where == "data":
        return "found under --root" if root is not None else "found under FEDREC_DATA"
    return {"cache": "cached", "missing": "missing"}[where]


def _check_root(root: Path | None) -> None:
    """Exit with a one-line error (status 2) when ``--root`` is not an existing folder."""
    if root is not None and not root.is_dir():
        _fail(FedRecError(f"--root {root}: folder not found, expected a dataset root holding "
                          "<name>/sequences.txt"))


@app.command("list")
def list_(
    root: Annotated[Optional[Path], typer.Option(help="Dataset root (default: $FEDREC_DATA).")]
    = None,
) -> None:
    """List the registered datasets and whether a local copy exists."""
    _check_root(root)
    width = max(len(n) for n in DATASETS)
    for name, entry in DATASETS.items():
        where, _ = local_status(name, str(root) if root else None)
        typer.echo(f"{name:<{width}}  {_status(where, root):<23}  {entry.description}")


@app.command("info")
def info(
    name: Annotated[str, typer.Argument(help="Dataset name (see `list`).")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset root (default: $FEDREC_DATA).")]
    = None,
) -> None:
    """Show source, checksums, normalisation, citation, terms and local statistics."""
    _check_root(root)
    try:
        d = _fetch.info(name, root)
    except FedRecError as exc:
        _fail(exc)
    typer.echo(f"name:        {d['name']}")
    typer.echo(f"description: {d['description']}")
    for f in d["raw"]:
        typer.echo(f"raw file:    {f['file']}")
        for url in f["urls"]:
            typer.echo(f"  url:       {url}" + (f" (member {f['member']})" if f["member"] else ""))
        for key in ("sha256", "git_blob", "size"):
            if f[key] is not None:
                typer.echo(f"  {key + ':':<10} {f[key]}")
    typer.echo(f"normalise:   {d['normalise']}")
    typer.echo(f"order:       {d['order']}")
    typer.echo(f"citation:    {d['citation']}")
    typer.echo(f"terms:       {d['terms']}")
    typer.echo(f"local:       {d['local'] or 'missing'} ({_status(d['location'], root)})")
    if d["stats"]:
        s = d["stats"]
        typer.echo(
            f"stats:       users={s['users']:,} items={s['items']:,} "
            f"interactions={s['interactions']:,} mean_len={s['mean_len']:.2f} "
            f"median_len={s['median_len']:g} min/max_len={s['min_len']}/{s['max_len']} "
            f"density={100 * s['density']:.4f}% top1pct_share={100 * s['top1pct_share']:.2f}%"
        )


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="Dataset name (see `list`).")],
    cache: Annotated[Optional[Path], typer.Option(
        help="Cache root (default: $FEDREC_CACHE or ~/.cache/fedrec).")] = None,
    force: Annotated[bool, typer.Option(help="Download and rebuild even if present.")] = False,
    mirror: Annotated[Optional[str], typer.Option(
        help="Base URL replacing scheme and host of every source (default: $FEDREC_MIRROR).")]
    = None,
) -> None:
    """Download the raw files, verify their checksums and build sequences.txt."""
    try:
        path = _fetch.fetch(name, cache=cache, base_url=mirror, force=force)
    except FedRecError as exc:
        _fail(exc)
    typer.echo(str(path))


@app.command("verify")
def verify(
    name: Annotated[str, typer.Argument(help="Dataset name (see `list`).")],
    root: Annotated[Optional[Path], typer.Option(
        help="Also check <root>/<name>/raw/ (default: $FEDREC_DATA).")] = None,
    cache: Annotated[Optional[Path], typer.Option(
        help="Cache root (default: $FEDREC_CACHE or ~/.cache/fedrec).")] = None,
) -> None:
    """Re-check the raw files against the registered checksums, and each sequences.txt
    against what its raw files normalise to (exit 1 on a mismatch)."""
    _check_root(root)
    try:
        results = _fetch.verify(name, root=root, cache=cache)
        results += _fetch.verify_sequences(name, root=root, cache=cache)
    except FedRecError as exc:
        _fail(exc)
    for path, ok, detail in results:
        typer.echo(f"{'ok' if ok else 'FAIL':<4}  {path}  {detail}")
    n_bad = sum(not ok for _, ok, _ in results)
    typer.echo(f"{len(results) - n_bad} passed, {n_bad} failed")
    if n_bad:
        raise typer.Exit(1)


@app.command("embed")
def embed(
    name: Annotated[str, typer.Argument(help="ml-100k, ml-1m or steam.")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset root (default: $FEDREC_DATA).")]
    = None,
    cache: Annotated[Optional[Path], typer.Option(
        help="Cache root (default: $FEDREC_CACHE or ~/.cache/fedrec).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per encoder batch.")] = 64,
) -> None:
    """Compute (or resume) the MiniLM embeddings of the items' titles and genres, cached
    outside the repository (fedrec.data.item_text); print the cache file."""
    from fedrec.data.item_text import load_side_info, text_cache_folder, text_embeddings
    from fedrec.data.registry import cache_dir, data_root

    _check_root(root)
    base = data_root(str(root) if root else None)
    if base is None:
        _fail(FedRecError("no dataset root: pass --root or set FEDREC_DATA"))
    try:
        info = load_side_info(name, base)
        out = cache if cache is not None else cache_dir()
        emb = text_embeddings(info, out, batch_size=batch_size)
    except (FedRecError, ValueError) as exc:
        _fail(exc)
    n_text = int(info.has_meta.sum())
    typer.echo(f"{text_cache_folder(info, out, 64) / 'embeddings.npy'}  items={info.n_items} "
               f"with_text={n_text} dim={emb.shape[1]}")
