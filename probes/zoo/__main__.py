"""``python -m probes.zoo``: list, inspect, download, verify and convert checkpoints."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probes.zoo.build import load_model
from probes.zoo.checkpoint import load_checkpoint
from probes.zoo.convert import CONVERTERS, convert, detect_format
from probes.zoo.download import cache_path, expected_hash_text, fetch, placement_help, read_lock, verify_file
from probes.zoo.errors import RegistryError, ZooError
from probes.zoo.registry import BASELINE_FORMAT, Entry, get_entry, load_registry, parse_arch

EXAMPLES = """examples:
  python -m probes.zoo list
  python -m probes.zoo info dino --json
  python -m probes.zoo download mocov3 mae          # resumable, hash-checked, into $PARTPROBE_HOME/checkpoints
  python -m probes.zoo verify cae                   # re-hash + check the layout loads strictly
  python -m probes.zoo detect my_ckpt.pth
  python -m probes.zoo convert vit-s-300ep.pth.tar --format mocov3 --arch vit_small_patch16_224 --out mocov3_s.safetensors
"""


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
        out.update({
            "arch": {"model": entry.arch.model, "kwargs": dict(entry.arch.kwargs)},
            "transform": {"mean": list(entry.transform.mean), "std": list(entry.transform.std),
                          "interpolation": entry.transform.interpolation, "resize": entry.transform.resize,
                          "crop": entry.transform.crop},
            "file": entry.file, "urls": list(entry.urls), "gdrive_id": entry.gdrive_id,
            "gdrive_folder": entry.gdrive_folder, "sha256": entry.sha256, "sha256_prefix": entry.sha256_prefix,
            "md5_prefix": entry.md5_prefix, "recorded_sha256": read_lock().get(entry.file, {}).get("sha256"),
            "projection": dict(entry.projection) if entry.projection else None,
            "cache_path": str(path), "cached": path.is_file(),
        })
    return out


def cmd_list(args) -> None:
    entries = list(load_registry())
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
    print(f"\n{len(entries)} entries in {load_registry().path}. Also: timm:<model> (timm's pretrained weights) "
          "or a checkpoint path with --format.")


def cmd_info(args) -> None:
    entry = get_entry(args.name)
    info = _entry_dict(entry)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if value not in (None, [], ""):
            print(f"{key:>15}: {value}")
    if entry.format != BASELINE_FORMAT:
        print(f"{'hash':>15}: {expected_hash_text(entry)}")


def cmd_download(args) -> None:
    for name in args.names:
        entry = get_entry(name)
        if entry.format == BASELINE_FORMAT:
            print(f"{entry.name}: built-in baseline, nothing to download")
            continue
        path, sha256 = fetch(entry, offline=args.offline)
        print(f"{entry.name}: {path}\n  sha256 {sha256}")


def cmd_verify(args) -> None:
    entry = get_entry(args.name)
    if entry.format == BASELINE_FORMAT:
        print(f"{entry.name}: built-in baseline, nothing to verify")
        return
    path = cache_path(entry)
    if not path.is_file():
        raise ZooError(f"{entry.name}: not downloaded yet. Run `python -m probes.zoo download {entry.name}`, or put "
                       f"the file here:\n{placement_help(entry)}")
    sha256 = verify_file(entry, path, rehash=True)
    print(f"{entry.name}: {path}\n  sha256 {sha256}: matches ({expected_hash_text(entry)})")
    # The container layouts of several releases are inferred (checkpoints.md); check this one for real,
    # on the meta device so that nothing is allocated.
    loaded = load_model(load_checkpoint(path), entry.format, entry.arch, where=str(path), device="meta")
    print(f"  layout: {entry.format!r} converts and loads strictly into {loaded.arch.describe()}"
          + (" (with projection head)" if loaded.projection is not None else ""))


def cmd_detect(args) -> None:
    print(detect_format(load_checkpoint(args.checkpoint), where=args.checkpoint))


def cmd_convert(args) -> None:
    from safetensors.torch import save_file

    path = Path(args.checkpoint)
    obj = load_checkpoint(path)
    fmt = args.format if args.format != "auto" else detect_format(obj, where=str(path))
    arch = None
    if args.arch:
        try:
            arch = parse_arch(json.loads(args.arch) if args.arch.lstrip().startswith("{") else args.arch, "--arch")
        except json.JSONDecodeError as err:
            raise RegistryError(f"--arch: not valid JSON ({err})") from None
    # Convert and prove it loads strictly (meta device: no memory) before writing anything.
    loaded = load_model(obj, fmt, arch, where=str(path), device="meta")
    state_dict, projection = convert(obj, fmt, where=str(path))
    meta = {"format": fmt, "arch": loaded.arch.describe(), "source": path.name}
    out = Path(args.out)
    from probes.fileio import atomic_path

    with atomic_path(out, suffix=".safetensors") as tmp:
        save_file({k: v.detach().clone().contiguous() for k, v in state_dict.items()}, str(tmp), metadata=meta)
    print(f"{out}: {len(state_dict)} tensors for {loaded.arch.describe()} (format {fmt!r})")
    if projection:
        head_out = out.with_name(out.name.replace(".safetensors", "") + ".projection.safetensors")
        with atomic_path(head_out, suffix=".safetensors") as tmp:
            save_file({k: v.detach().clone().contiguous() for k, v in projection.items()}, str(tmp), metadata=meta)
        print(f"{head_out}: projection head, {len(projection)} tensors (weight-norm folded)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probes.zoo", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every registry entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("info", help="one entry: files, URLs, hashes, architecture, transform")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("download", help="download (resuming) and verify into the cache")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--offline", action="store_true", default=None, help="only check the cache")
    p.set_defaults(func=cmd_download)
    p = sub.add_parser("verify", help="re-hash a cached file and check that its layout loads strictly")
    p.add_argument("name")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("detect", help="guess the format of a checkpoint file")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_detect)
    p = sub.add_parser("convert", help="convert a checkpoint to a timm state dict (.safetensors)")
    p.add_argument("checkpoint")
    p.add_argument("--format", default="auto", choices=["auto", *CONVERTERS])
    p.add_argument("--arch", default=None,
                   help='timm model name, or JSON {"model": name, "kwargs": {...}} (default: inferred from the tensors)')
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=cmd_convert)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
