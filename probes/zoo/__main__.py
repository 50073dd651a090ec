"""``python -m probes.zoo``: list, inspect, download, verify and convert checkpoints."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from probes.zoo.download import (cache_path, check_hashes, expected_hash_text, fetch, file_hashes, lock_path,
                                 lock_record, placement_help, record_hash, refetch, reset_help, reset_lock)
from probes.zoo.errors import ChecksumError, RegistryError, ZooError
from probes.zoo.registry import BASELINE_FORMAT, REGISTRY_ENV, Entry, get_entry, load_registry

EXAMPLES = """examples:
  python -m probes.zoo list
  python -m probes.zoo info dino --json
  python -m probes.zoo info timm:vit_small_patch16_224.dino
  python -m probes.zoo download mocov3 mae          # resumable, hash-checked, into $PARTPROBE_HOME/checkpoints
  python -m probes.zoo download timm:vit_small_patch16_224.dino   # into the Hugging Face cache
  python -m probes.zoo verify cae                   # re-hash + check the layout loads strictly
  python -m probes.zoo verify cae --refetch         # download again and compare with the cached file
  python -m probes.zoo verify cae --reset-lock      # forget a wrongly recorded first-use hash, record anew
  python -m probes.zoo verify my_ckpt.pth --format mocov3
  python -m probes.zoo detect my_ckpt.pth
  python -m probes.zoo convert vit-s-300ep.pth.tar --format mocov3 --out mocov3_s.safetensors
  python -m probes.zoo convert tiny.pth --format deit --arch-kwargs '{"num_heads": 4}' --out tiny.safetensors
  python -m probes.zoo --registry my_models.yaml list   # or PARTPROBE_REGISTRY=my_models.yaml
"""


def _is_file_argument(name: str) -> bool:
    from probes.zoo.loader import CHECKPOINT_SUFFIXES

    return Path(name).expanduser().is_file() or os.sep in name or name.endswith(CHECKPOINT_SUFFIXES)


def _host(entry: Entry) -> str:
    if entry.format == BASELINE_FORMAT:
        return "built-in"
    if entry.urls:
        return "http"
    return "gdrive" if entry.gdrive_id else "gdrive-folder (manual)"


def _entry_dict(entry: Entry) -> dict:
    out = {"name": entry.name, "aliases": list(entry.aliases), "method": entry.method, "format": entry.format,
           **dict(entry.meta)}
    if entry.format != BASELINE_FORMAT:
        path = cache_path(entry)
        record = lock_record(entry) or {}
        out.update({
            "arch": {"model": entry.arch.model, "kwargs": dict(entry.arch.kwargs)},
            "transform": {"mean": list(entry.transform.mean), "std": list(entry.transform.std),
                          "interpolation": entry.transform.interpolation, "resize": entry.transform.resize,
                          "crop": entry.transform.crop},
            "file": entry.file, "urls": list(entry.urls), "gdrive_id": entry.gdrive_id,
            "gdrive_folder": entry.gdrive_folder, "sha256": entry.sha256, "sha256_prefix": entry.sha256_prefix,
            "md5_prefix": entry.md5_prefix, "recorded_sha256": record.get("sha256"),
            "trust": record.get("trust", "first-use") if record else None,
            "projection": dict(entry.projection) if entry.projection else None,
            "cache_path": str(path), "cached": path.is_file(),
        })
    out["registry"] = str(load_registry().origins[entry.name])
    return out


def cmd_list(args) -> None:
    registry = load_registry()
    entries = list(registry)
    if args.json:
        print(json.dumps([_entry_dict(e) for e in entries], indent=2))
        return
    rows = [("name", "aliases", "method", "arch", "epochs", "format", "host", "cached")]
    for e in entries:
        arch = e.arch.model if e.arch else "-"
        cached = "yes" if e.file and cache_path(e).is_file() else ("-" if e.format == BASELINE_FORMAT else "no")
        rows.append((e.name, ",".join(e.aliases), e.method, arch, str(e.meta.get("epochs", "")), e.format, _host(e), cached))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\n{len(entries)} entries in {registry.describe_paths()}. Also: timm:<model> (timm's pretrained weights) "
          "or a checkpoint path with --format.")


def _print_info(info: dict) -> None:
    for key, value in info.items():
        if value not in (None, [], ""):
            print(f"{key:>15}: {value}")


def cmd_info(args) -> None:
    if args.name.startswith("timm:"):
        from probes.zoo.timm_hub import timm_info

        info = timm_info(args.name[len("timm:"):])
        print(json.dumps(info, indent=2)) if args.json else _print_info(info)
        return
    entry = get_entry(args.name)
    info = _entry_dict(entry)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    _print_info(info)
    if entry.format != BASELINE_FORMAT:
        print(f"{'hash':>15}: {expected_hash_text(entry)}")


def cmd_download(args) -> None:
    for name in args.names:
        if name.startswith("timm:"):
            from probes.zoo.timm_hub import load_timm

            weights = load_timm(name[len("timm:"):], offline=args.offline)
            print(f"{name}: {weights.path or '(timm could not say where it cached the file)'}\n"
                  f"  sha256 {weights.checkpoint_sha256}")
            continue
        entry = get_entry(name)
        if entry.format == BASELINE_FORMAT:
            print(f"{entry.name}: built-in baseline, nothing to download")
            continue
        path, sha256 = fetch(entry, offline=args.offline)
        print(f"{entry.name}: {path}\n  sha256 {sha256}")


def _parse_json_option(value: str | None, option: str):
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise RegistryError(f"{option}: not valid JSON ({err}); expected e.g. '{{\"num_heads\": 12}}'") from None


def _arch_option(args) -> tuple[object, dict]:
    """--arch (a name or JSON) and --arch-kwargs (JSON laid over it, or over the inferred architecture)."""
    from probes.zoo.registry import parse_arch

    arch = None
    if args.arch:
        arch = parse_arch(_parse_json_option(args.arch, "--arch") if args.arch.lstrip().startswith("{") else args.arch,
                          "--arch")
    overrides = _parse_json_option(getattr(args, "arch_kwargs", None), "--arch-kwargs") or {}
    if not isinstance(overrides, dict):
        raise RegistryError(f"--arch-kwargs: got {overrides!r} (expected a JSON object of timm.create_model kwargs)")
    return arch, overrides


def _layout_line(fmt: str, loaded) -> str:
    return (f"  layout: {fmt!r} converts and loads strictly into {loaded.arch.describe()}"
            + (" (with projection head)" if loaded.projection is not None else ""))


def _verify_file(args) -> None:
    """A user's own file: its hash and whether its layout loads (nothing is recorded)."""
    from probes.zoo.build import load_model
    from probes.zoo.checkpoint import load_checkpoint
    from probes.zoo.formats import detect_format

    path = Path(args.name).expanduser()
    obj = load_checkpoint(path)
    fmt = args.format or detect_format(obj, where=str(path))
    arch, overrides = _arch_option(args)
    loaded = load_model(obj, fmt, arch, where=str(path), device="meta", overrides=overrides)
    print(f"{path}\n  sha256 {file_hashes(path)[0]} (a local file: no registry hash to compare)")
    print(_layout_line(fmt, loaded))


def cmd_verify(args) -> None:
    if args.name is None:
        return _verify_first_use(args)
    if _is_file_argument(args.name):
        if args.reset_lock or args.refetch:
            raise ZooError(f"{args.name}: --reset-lock and --refetch apply to registry entries, not to files")
        return _verify_file(args)
    if args.format or args.arch or args.arch_kwargs:
        raise ZooError(f"{args.name}: --format/--arch/--arch-kwargs apply to a file; a registry entry has its own")
    from probes.zoo.loader import check_layout

    entry = get_entry(args.name)
    if entry.format == BASELINE_FORMAT:
        print(f"{entry.name}: built-in baseline, nothing to verify")
        return
    path = cache_path(entry)
    if not path.is_file():
        raise ZooError(f"{entry.name}: not downloaded yet. Run `python -m probes.zoo download {entry.name}`, or put "
                       f"the file here:\n{placement_help(entry)}")
    if args.reset_lock:
        removed = reset_lock(entry)
        print(f"{entry.name}: " + (f"forgot sha256 {removed.get('sha256')} (trust: {removed.get('trust', 'first-use')})"
                                   if removed else "no recorded hash to forget") + f" in {lock_path()}")
    sha256, md5 = file_hashes(path, md5=bool(entry.md5_prefix))
    check_hashes(entry, path, sha256, md5)
    # The container layouts of several releases are inferred (docs/checkpoints.md#evidence); check this one
    # for real, on the meta device so that nothing is allocated, and only then trust the hash.
    loaded = check_layout(entry, path)
    record = lock_record(entry)
    if not record or record.get("sha256") != sha256 or record.get("mtime_ns") != path.stat().st_mtime_ns:
        origin = (record or {}).get("origin", "found in the cache (not downloaded by partprobe)")
        record_hash(entry, sha256, path, source=(record or {}).get("source", str(path)), origin=origin)
    print(f"{entry.name}: {path}\n  sha256 {sha256}: matches ({expected_hash_text(entry)})")
    print(_layout_line(entry.format, loaded))
    if args.refetch:
        cached, fresh, source = refetch(entry)
        if fresh != cached:
            raise ChecksumError(f"{path} ({entry.name}): the cached file (sha256 {cached}) differs from a new download "
                                f"of {source} (sha256 {fresh}); {reset_help(entry)} after replacing the file")
        print(f"  refetch: a complete new download of {source} has the same sha256")


def _verify_first_use(args) -> None:
    """``verify --refetch`` without NAME: every cached entry whose lock hash was trusted on first use."""
    if not args.refetch or args.reset_lock or args.format or args.arch or args.arch_kwargs:
        raise ZooError("verify: give NAME (or FILE); without one, only --refetch is meant: re-check every entry whose "
                       "recorded hash was trusted on first use")
    names = []
    for entry in load_registry():
        record = lock_record(entry) if entry.format != BASELINE_FORMAT else None
        if record and record.get("trust", "first-use") == "first-use" and cache_path(entry).is_file():
            names.append(entry.name)
    if not names:
        print(f"no cached entry has a first-use hash in {lock_path()}")
    for name in names:
        cmd_verify(argparse.Namespace(**{**vars(args), "name": name}))


def cmd_detect(args) -> None:
    from probes.zoo.checkpoint import load_checkpoint
    from probes.zoo.formats import detect_format

    print(detect_format(load_checkpoint(args.checkpoint), where=args.checkpoint))


def cmd_convert(args) -> None:
    from safetensors.torch import save_file

    from probes.fileio import atomic_path
    from probes.zoo.build import load_model
    from probes.zoo.checkpoint import load_checkpoint
    from probes.zoo.formats import FORMATS, convert, detect_format
    from probes.zoo.loader import converted_metadata, projection_sidecar

    path = Path(args.checkpoint)
    obj = load_checkpoint(path)
    fmt = args.format if args.format != "auto" else detect_format(obj, where=str(path))
    arch, overrides = _arch_option(args)
    # Convert and prove it loads strictly (meta device: no memory) before writing anything.
    loaded = load_model(obj, fmt, arch, where=str(path), device="meta", overrides=overrides,
                        force_heads=args.force_heads)
    state_dict, projection = convert(obj, fmt, where=str(path))
    meta = converted_metadata(fmt, loaded.arch, path.name, args.force_heads)
    out = Path(args.out)
    if not out.name.endswith(".safetensors"):
        raise ZooError(f"--out {out}: expected a .safetensors path")
    with atomic_path(out, suffix=".safetensors") as tmp:  # the umask's permissions, one rename
        save_file({k: v.detach().clone().contiguous() for k, v in state_dict.items()}, str(tmp), metadata=meta)
    print(f"{out}: {len(state_dict)} tensors for {loaded.arch.describe()} (format {fmt!r}; "
          f"load it with format='timm')")
    if projection:
        head_out = projection_sidecar(out)
        with atomic_path(head_out, suffix=".safetensors") as tmp:
            save_file({k: v.detach().clone().contiguous() for k, v in projection.items()}, str(tmp),
                      metadata={**meta, "projection": FORMATS[fmt].projection})
        print(f"{head_out}: projection head, {len(projection)} tensors (weight-norm folded)")


def main(argv=None) -> int:
    """Exit status 0, or 2 with one ``error:`` line for a zoo error (``--debug``: the traceback)."""
    from probes.errors import run_main

    return run_main(_main, argv, prog="python -m probes.zoo")


def _main(argv) -> int:
    from probes.zoo.formats import FORMATS

    parser = argparse.ArgumentParser(prog="python -m probes.zoo", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", metavar="FILE", default=None,
                        help=f"your own registry file, adding entries to the shipped one (same as {REGISTRY_ENV}=FILE)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every registry entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("info", help="one entry (or timm:<model>): files, URLs, hashes, architecture, transform")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("download", help="download (resuming) and verify into the cache")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--offline", action="store_true", default=None, help="only check the cache")
    p.set_defaults(func=cmd_download)
    p = sub.add_parser("verify", help="re-hash a cached file (or check a file of yours) and check that its layout "
                                      "loads strictly")
    p.add_argument("name", metavar="NAME|FILE", nargs="?",
                   help="an entry or a file; none with --refetch: every entry whose hash was trusted on first use")
    p.add_argument("--format", default=None, choices=list(FORMATS), help="a file's format (default: detected)")
    p.add_argument("--arch", default=None, help='a file\'s timm model name, or JSON {"model": name, "kwargs": {...}}')
    p.add_argument("--arch-kwargs", default=None, help="JSON kwargs laid over a file's (inferred) architecture")
    p.add_argument("--reset-lock", action="store_true",
                   help="forget the recorded hash of NAME first, then record the cached file's (after its checks)")
    p.add_argument("--refetch", action="store_true", help="download NAME again and compare with the cached file")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("detect", help="guess the format of a checkpoint file")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_detect)
    p = sub.add_parser("convert", help="convert a checkpoint to a timm state dict (.safetensors)")
    p.add_argument("checkpoint")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    p.add_argument("--arch", default=None,
                   help='timm model name, or JSON {"model": name, "kwargs": {...}} (default: inferred from the tensors)')
    p.add_argument("--arch-kwargs", default=None,
                   help='JSON kwargs laid over the (inferred) architecture, for what the tensors leave open, '
                        'e.g. \'{"num_heads": 8}\'')
    p.add_argument("--force-heads", action="store_true",
                   help="accept a num_heads that disagrees with the method's rule (shapes cannot tell heads apart)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=cmd_convert)
    args = parser.parse_args(argv)
    previous = os.environ.get(REGISTRY_ENV)
    if args.registry:
        os.environ[REGISTRY_ENV] = args.registry  # read by every registry lookup of this command
    try:
        args.func(args)
    finally:
        if args.registry:
            if previous is None:
                os.environ.pop(REGISTRY_ENV, None)
            else:
                os.environ[REGISTRY_ENV] = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())
