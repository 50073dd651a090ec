"""Experiment configuration: one dataclass per experiment, composed of shared parts, and the command line
generated from its fields.

Every option is written once, as a field with its help text and choices::

    @dataclass
    class RunOptions:
        batch_size: int = option(64, help="Images per encoder forward pass.")

An experiment's config composes sections (``ModelOptions``, a data section, a protocol section,
``RunOptions``, ``OutputOptions``) plus ``preset`` and ``seed``. From it come:

- the command line (``build_parser``): one ``--flag`` per field, help and choices from the field, an
  option given twice is an error (never a silent last-wins), ``--preset`` and ``--config FILE.json``;
- the saved configuration (``to_dict``): the resolved dataclass as JSON, written beside every record;
  ``--config`` of that file replays the run exactly (``from_dict``);
- the record's protocol (``recorded``): every field that changes a number (``recorded=True``, the
  default for model, data and protocol sections), under its field name.

A preset is data: ``{dotted field: value}`` applied to the fields left unset (``None``); an explicit
option always wins. Run and output options never change a number (``recorded=False``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from probes.errors import UserError

MISSING = dataclasses.MISSING


class ConfigError(UserError, ValueError):
    """An option value or a configuration file is invalid; the message names the option and the file."""


# ---------------------------------------------------------------------------------------------------
# Declaring options
# ---------------------------------------------------------------------------------------------------

def option(default: Any = None, *, help: str, flag: str | None = None, repeat: bool = False,
           recorded: bool | None = None, cli: bool = True, metavar: str | None = None, several: bool = False):
    """A config field with its command-line help.

    ``repeat``: the flag may be given several times and collects a list (``--feature a --feature b``).
    ``recorded``: the value goes into result records (and into cache keys where the section feeds one);
    ``None`` takes the section's rule (``Section.recorded``). ``cli=False`` keeps a field out of the
    command line (set from code or a config file only). ``several``: the flag may be given several times
    and the command runs once per value (``--model a --model b``).
    """
    meta = {"help": help, "flag": flag, "repeat": repeat, "recorded": recorded, "cli": cli, "metavar": metavar,
            "several": several}
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"option": meta})
    return field(default=default, metadata={"option": meta})


def section(cls):
    """A sub-config field (its fields become flags of the same command line)."""
    return field(default_factory=cls, metadata={"section": True})


def _is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section"))


def _option_meta(f: dataclasses.Field) -> dict:
    return f.metadata.get("option", {"help": "", "flag": None, "repeat": False, "recorded": None, "cli": True,
                                     "metavar": None, "several": False})


@dataclass(frozen=True)
class FieldInfo:
    path: str                 # dotted path in the config, e.g. "run.batch_size"
    name: str                 # the field's own name, e.g. "batch_size"
    type: Any
    default: Any
    meta: dict
    recorded: bool

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or "--" + self.name.replace("_", "-")


def walk(cls_or_obj, prefix: str = "", recorded: bool | None = None):
    """Every option of a config class (or instance), depth first, as ``FieldInfo``."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = typing.get_type_hints(cls)
    section_rule = getattr(cls, "RECORDED", True) if recorded is None else recorded
    for f in fields(cls):
        if f.name.startswith("_"):
            continue
        path = f"{prefix}{f.name}"
        if _is_section(f):
            sub = hints[f.name]
            yield from walk(sub, prefix=f"{path}.", recorded=getattr(sub, "RECORDED", True))
            continue
        meta = _option_meta(f)
        rule = meta["recorded"] if meta["recorded"] is not None else section_rule
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        yield FieldInfo(path, f.name, hints[f.name], default, meta, bool(rule))


# ---------------------------------------------------------------------------------------------------
# Types: parsing values from the command line and from JSON
# ---------------------------------------------------------------------------------------------------

def _strip_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def choices_of(tp) -> tuple | None:
    tp, _ = _strip_optional(tp)
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if args and typing.get_origin(args[0]) is Literal:
            return typing.get_args(args[0])
    return None


def _scalar(tp, text: str, where: str):
    if tp is bool:
        lowered = str(text).lower()
        if lowered in ("on", "true", "yes", "1"):
            return True
        if lowered in ("off", "false", "no", "0"):
            return False
        raise ConfigError(f"{where}: expected on or off, got {text!r}")
    if typing.get_origin(tp) is Literal:
        allowed = typing.get_args(tp)
        for value in allowed:
            if str(value) == str(text):
                return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, allowed))}, got {text!r}")
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {text!r}") from None
    if tp is Path:
        return Path(text)
    return text


def parse_text(tp, text: str, where: str):
    """A command-line string as a value of the field's type."""
    inner, _ = _strip_optional(tp)
    if inner is dict or typing.get_origin(inner) is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err}); expected e.g. '{{\"img_size\": 448}}'") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {text!r}")
        return value
    return _scalar(inner, text, where)


def coerce(tp, value, where: str):
    """A JSON value (from a config file or a preset) as a value of the field's type, or ConfigError."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: expected a value, got null")
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = [a for a in typing.get_args(inner) if a is not Ellipsis][0]
        items = [coerce(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if inner is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        return _scalar(bool, value, where)
    if origin is Literal:
        return _scalar(inner, value, where)
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if inner is Path:
        return Path(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# ---------------------------------------------------------------------------------------------------
# Dicts: saving and replaying a configuration
# ---------------------------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """JSON-plain form of a config or record value: dataclasses become dicts, paths strings, tuples lists, numpy
    scalars Python numbers."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value) if not f.name.startswith("_")}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def to_dict(cfg) -> dict:
    return plain(cfg)


def from_dict(cls, data: Mapping[str, Any], where: str = "config"):
    """A config of ``cls`` from a (possibly partial) nested dict; unknown keys and bad values are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.name.startswith("_")}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} (known: {sorted(known)})")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        if _is_section(f):
            kwargs[name] = from_dict(hints[name], value, f"{where}.{name}")
        else:
            kwargs[name] = coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _nest(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def get(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def replace(cfg, **changes):
    """A copy of ``cfg`` with dotted-path fields changed: ``replace(cfg, **{"run.batch_size": 8})``."""
    nested = _nest(changes)

    def apply(obj, updates):
        values = {}
        for key, value in updates.items():
            if isinstance(value, dict) and is_dataclass(getattr(obj, key)):
                values[key] = apply(getattr(obj, key), value)
            else:
                values[key] = value
        return dataclasses.replace(obj, **values)
    return apply(cfg, nested)


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object (a saved experiment configuration)")
    return data


# ---------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """Values for the fields a user leaves unset; ``per_dataset`` overrides them for some datasets."""
    values: Mapping[str, Any]
    per_dataset: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    about: str = ""

    def for_dataset(self, dataset: str | None) -> dict:
        return {**self.values, **self.per_dataset.get(dataset or "", {})}


def apply_preset(cfg, override: bool = False):
    """Fill every unset (None) field named by the config's preset; ``override`` also replaces set values."""
    presets = getattr(type(cfg), "PRESETS", None)
    if not presets:
        return cfg
    if cfg.preset not in presets:
        raise ConfigError(f"--preset: expected one of {', '.join(presets)}, got {cfg.preset!r}")
    dataset = getattr(getattr(cfg, "data", None), "dataset", None)
    infos = {info.path: info for info in walk(type(cfg))}
    changes = {}
    for path, value in presets[cfg.preset].for_dataset(dataset).items():
        if path not in infos:
            raise ConfigError(f"preset {cfg.preset!r}: unknown option {path!r}")
        if override or get(cfg, path) is None:
            changes[path] = coerce(infos[path].type, value, f"preset {cfg.preset!r}, {path}")
    return replace(cfg, **changes) if changes else cfg


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------

class _Once(argparse.Action):
    """Store a value; the same option given twice is an error (never a silent last-wins)."""

    def __init__(self, *args, convert=None, **kwargs):
        self.convert = convert
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if hasattr(namespace, self.dest):
            parser.error(f"{option_string} given twice; give it once")
        setattr(namespace, self.dest, _converted(parser, self.convert, values, option_string))


class _Append(argparse.Action):
    def __init__(self, *args, convert=None, **kwargs):
        self.convert = convert
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append(_converted(parser, self.convert, values, option_string))
        setattr(namespace, self.dest, items)


def _converted(parser, convert, values, option_string):
    """The option's value parsed to its type; a bad value is a usage error naming the option (exit 2)."""
    if convert is None:
        return values
    try:
        return convert(values, option_string)
    except ConfigError as err:
        parser.error(str(err))


def _help(info: FieldInfo) -> str:
    text = info.meta["help"]
    choices = choices_of(info.type)
    inner, _ = _strip_optional(info.type)
    if choices and "choose" not in text:
        text += f" Choices: {', '.join(map(str, choices))}."
    if info.default is not None and not isinstance(info.default, bool) and info.default != [] and \
            inner is not bool:
        text += f" Default: {plain(info.default)}."
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of ``cls`` (and its sections), grouped by section."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints_cache: dict[str, str] = {}
    for info in walk(cls):
        if not info.meta["cli"]:
            continue
        head = info.path.rsplit(".", 1)[0] if "." in info.path else ""
        if head not in groups:
            title = hints_cache.get(head) or (head.replace("_", " ") + " options" if head else "experiment")
            groups[head] = parser.add_argument_group(title)
        group = groups[head]
        inner, optional = _strip_optional(info.type)
        origin = typing.get_origin(inner)
        choices = choices_of(info.type)
        kw: dict[str, Any] = dict(dest=info.path, default=argparse.SUPPRESS, help=_help(info),
                                  metavar=info.meta["metavar"] or info.name.upper())
        if inner is bool and not optional:
            kw.pop("metavar")
            group.add_argument(info.flag, action=argparse.BooleanOptionalAction, **kw)
            continue

        def convert(text, flag, tp=inner):
            return parse_text(tp, text, flag)
        if inner is bool:               # unset = the preset decides
            kw["metavar"] = "{on,off}"
        elif choices:
            kw["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        if origin in (list, tuple):
            item = [a for a in typing.get_args(inner) if a is not Ellipsis][0]

            def convert_item(text, flag, tp=item):
                return parse_text(tp, text, flag)
            if info.meta["repeat"]:
                group.add_argument(info.flag, action=_Append, convert=convert_item, **kw)
            else:
                group.add_argument(info.flag, action=_Once, nargs="+",
                                   convert=lambda values, flag, c=convert_item: [c(v, flag) for v in values], **kw)
            continue
        if info.meta.get("several"):
            kw["help"] += " Repeat it to run several in turn."
            group.add_argument(info.flag, action=_Append, convert=convert, **kw)
            continue
        group.add_argument(info.flag, action=_Once, convert=convert, **kw)


def build_parser(cls, description: str = "", prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    presets = getattr(cls, "PRESETS", None)
    parser.add_argument("--config", default=None, metavar="FILE.json",
                        help="Start from a saved configuration (the config.json written beside every record); "
                             "options given on the command line override it.")
    if presets:
        about = "; ".join(f"{name}: {p.about}" for name, p in presets.items() if p.about)
        parser.add_argument("--preset", dest="preset", action=_Once, default=argparse.SUPPRESS,
                            metavar="{" + ",".join(presets) + "}",
                            help=f"Protocol preset (values for every option left unset). {about}. "
                                 f"Default: {cls.__dataclass_fields__['preset'].default}.")
    parser.add_argument("--debug", action="store_true",
                        help="Show the full traceback of an error (also PARTPROBE_DEBUG=1).")
    add_options(parser, cls)
    return parser


def explicit_values(args: argparse.Namespace) -> dict:
    """The options given on the command line, as a nested dict (absent options are not in it)."""
    skip = {"config", "debug"}
    return _nest({k: v for k, v in vars(args).items() if k not in skip})


def config_from_args(cls, args: argparse.Namespace) -> list:
    """The configs of a command line: config file < (explicit) preset < explicit options, then the preset
    fills what is still unset. One config per value of a ``several`` option (``--model a --model b``)."""
    several = [info.path for info in walk(cls) if info.meta.get("several")]
    flat = vars(args)
    runs = [dict(flat)]
    for path in several:
        if path in flat:
            runs = [{**r, path: value} for r in runs for value in flat[path]]
    if len(flat.get("model.model") or ()) > 1 and "model.name" in flat:
        raise ConfigError(f"--name {flat['model.name']}: one label for {len(flat['model.model'])} models "
                          f"({', '.join(flat['model.model'])}); run each model on its own command line to name it")
    return [_one_config(cls, argparse.Namespace(**r)) for r in runs]


def _one_config(cls, args: argparse.Namespace):
    explicit = explicit_values(args)
    base = load_config_file(args.config) if getattr(args, "config", None) else {}
    where = f"--config {args.config}" if getattr(args, "config", None) else "command line"
    cfg = from_dict(cls, base, where) if base else cls()
    if "preset" in explicit and base:
        cfg = apply_preset(dataclasses.replace(cfg, preset=explicit["preset"]), override=True)
    cfg = _apply_explicit(cfg, explicit, cls)
    return resolve(cfg)


def _apply_explicit(cfg, explicit: dict, cls):
    if not explicit:
        return cfg
    merged = _merge(to_dict(cfg), explicit)
    return from_dict(cls, merged, "command line")


def resolve(cfg):
    """The preset applied to every unset field, then each section's checks (``check``) and the config's own
    (``validate``)."""
    cfg = apply_preset(cfg)
    for f in fields(cfg):
        part = getattr(cfg, f.name)
        if _is_section(f) and callable(getattr(part, "check", None)):
            part.check()
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def recorded_values(cfg, sections: tuple[str, ...] | None = None) -> dict:
    """``{field name: value}`` of every recorded option (optionally only of some sections)."""
    out = {}
    for info in walk(cfg):
        head = info.path.split(".", 1)[0] if "." in info.path else ""
        if not info.recorded or (sections is not None and head not in sections):
            continue
        out[info.name] = plain(get(cfg, info.path))
    return out


# ---------------------------------------------------------------------------------------------------
# Shared parts
# ---------------------------------------------------------------------------------------------------

@dataclass
class ModelOptions:
    """Which encoder, and how its forward pass runs. Every field here changes the numbers; the encoder keeps
    them (``Encoder.load_options``), so they are part of its identity in feature-cache keys and records."""

    model: str = option("dino", help="Encoder: registry name or alias (python -m probes.zoo list), timm:<name>, "
                                     "or a checkpoint file.", recorded=False, several=True)
    name: str | None = option(None, help="The label of the model in records, the leaderboard and figures (default: "
                                         "the registry alias, timm:<name> as typed, or for a file its stem and the "
                                         "first 8 hex digits of its SHA-256, e.g. checkpoint-1a2b3c4d).",
                              recorded=False, metavar="LABEL")
    format: str | None = option(None, help="Container format of a checkpoint file (e.g. dino_full); detected "
                                           "when omitted.", recorded=False)
    arch: str | None = option(None, help="timm architecture of a checkpoint file (e.g. vit_base_patch16_224), or "
                                         "JSON {\"model\": name, \"kwargs\": {...}}.", recorded=False)
    arch_kwargs: dict | None = option(None, help="JSON kwargs for the architecture, e.g. '{\"img_size\": 448}'.",
                                      recorded=False)
    branch: Literal["teacher", "student"] = option(
        "teacher", help="Full DINO/iBOT/CARP checkpoints: the teacher (official README) or the student (the "
                        "official part-aware scripts' default).", recorded=False)
    input_size: int | None = option(None, help="Side of the encoder's square input; a ViT is built at this size "
                                               "with its position embeddings rebuilt by its method's rule "
                                               "(default: the encoder's own, 224 for real models).")
    precision: Literal["fp32", "bf16"] | None = option(
        None, help="Encoder arithmetic on a GPU: float32, or bf16 autocast; always float32 on a CPU "
                   "(default: the preset's).")
    mae_token_shuffle: bool | None = option(
        None, help="MAE checkpoints only: shuffle the patch tokens before the position embedding, as the "
                   "official part-aware code did (docs/protocols.md#mae-token-shuffle); on or off "
                   "(default: the preset's).")

    def check(self) -> None:
        check_model_name(self.model)
        if self.name is not None and not (self.name.strip() and self.name.isprintable() and len(self.name) <= 100):
            raise ConfigError(f"--name {self.name!r}: expected a non-empty printable label of at most 100 characters")
        if self.input_size is not None and self.input_size < 1:
            raise ConfigError(f"--input-size {self.input_size}: expected a positive number of pixels (a multiple of "
                              f"the model's patch size, e.g. 224)")

    def arch_spec(self):
        """``arch`` and ``arch_kwargs`` as load_encoder takes them."""
        arch: Any = self.arch
        if isinstance(arch, str) and arch.strip().startswith("{"):
            try:
                arch = json.loads(arch)
            except json.JSONDecodeError as err:
                raise ConfigError(f"--arch: not valid JSON ({err})") from None
        if self.arch_kwargs is None:
            return arch
        if isinstance(arch, dict):
            return {**arch, "kwargs": {**arch.get("kwargs", {}), **self.arch_kwargs}}
        return {"model": arch, "kwargs": dict(self.arch_kwargs)} if arch else {"kwargs": dict(self.arch_kwargs)}


def check_model_name(model: str) -> None:
    """Fail at parse time on a model that cannot be found (before the first of several ``--model`` runs): a
    checkpoint path that is not a file, or a name that is not in the registry. Nothing is loaded."""
    import os

    from probes.zoo.loader import CHECKPOINT_SUFFIXES
    from probes.zoo.registry import get_entry

    if model.startswith("timm:") or Path(model).expanduser().is_file():
        return
    if os.sep in model or model.endswith(CHECKPOINT_SUFFIXES):
        raise ConfigError(f"--model {model}: no such checkpoint file")
    get_entry(model)       # a RegistryError listing the names and aliases


@dataclass
class RunOptions:
    """How the work is done; nothing here changes a number."""
    RECORDED = False

    batch_size: int = option(64, help="Images per encoder forward pass (feature extraction).")
    num_workers: int = option(0, help="DataLoader worker processes for decoding and cropping.")
    device: str | None = option(None, help="cpu, cuda or cuda:N (default: cuda when available).")
    cache: bool = option(True, help="Read and write the on-disk feature cache ($PARTPROBE_HOME/features).")
    quiet: bool = option(False, help="No progress bars.")

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: expected an integer >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers {self.num_workers}: expected an integer >= 0 (0: decode in the main "
                              f"process)")
        if self.device is not None:
            check_device(self.device)


def check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` that this machine has; else a ConfigError saying what it has."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"--device {device}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}, "
                          f"torch.cuda.is_available() is False); use --device cpu")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")


@dataclass
class OutputOptions:
    """Where the records go."""
    RECORDED = False

    results: Path | None = option(None, help="Folder for result records (default: $PARTPROBE_RESULTS or "
                                             "$PARTPROBE_HOME/results).")
    write: bool = option(True, help="Write result records (--no-write: print only).")


@dataclass
class KnnOptions:
    """kNN classification, DINO protocol (docs/protocols.md#knn): cosine on L2-normalised features,
    votes weighted exp(similarity / T)."""

    knn: bool = option(True, help="Also run kNN classification on the same features.", recorded=False)
    knn_k: int = option(20, help="The reported k (top1/top5); every k of --knn-ks is recorded too.")
    knn_ks: tuple[int, ...] = option((10, 20, 100, 200), help="The ks evaluated.")
    knn_temperature: float = option(0.07, help="Temperature T of the vote weights exp(sim / T).")

    def check(self) -> None:
        if any(k < 1 for k in self.knn_ks):
            raise ConfigError(f"--knn-ks {' '.join(map(str, self.knn_ks))}: expected integers >= 1")
        if self.knn and self.knn_k not in self.knn_ks:
            raise ConfigError(f"--knn-k {self.knn_k}: the reported k must be one of --knn-ks {list(self.knn_ks)}")
        if self.knn_temperature <= 0:
            raise ConfigError(f"--knn-temperature {self.knn_temperature}: expected a positive number")


def check_block(block: int | None, encoder=None) -> None:
    """``--block K``: 0-based, and (given the encoder) below its depth."""
    if block is None:
        return
    if block < 0:
        raise ConfigError(f"--block {block}: expected a 0-based block index >= 0")
    depth = getattr(encoder, "num_blocks", None)
    if depth is not None and block >= depth:
        kind = "stages" if getattr(encoder, "kind", "") == "resnet" else "blocks"
        raise ConfigError(f"--block {block}: the model has {depth} {kind[:-1] if depth == 1 else kind}, so K is "
                          f"0..{depth - 1}")


@dataclass
class RetrievalOptions:
    """What a retrieval run ranks, and whether a query ranks itself (docs/protocols.md#queries-gallery-and-positives)."""

    features: list[Literal["patch_mean", "cls", "projection", "dense_patch"]] | None = option(
        None, flag="--feature", repeat=True, recorded=False,
        help="Feature(s) to evaluate (repeatable): patch_mean, cls, projection (part retrieval with --crop dense: "
             "dense_patch); default patch_mean and cls (+ projection when the checkpoint has one).")
    block: int | None = option(None, recorded=False, help="Pool the features from block K's output (0-based, "
                                                          "before the final norm) instead of the final output.")
    self_match: Literal["included", "excluded", "both"] | None = option(
        None, help="When queries are the gallery: whether each query's own item is in its ranking (the official "
                   "part-retrieval code: included). Default: the preset's.")

    def check(self) -> None:
        check_block(self.block)

    def modes(self, same: bool = True) -> list[str]:
        """The self-match modes to score: one or both when queries are the gallery, ``disjoint`` otherwise."""
        if not same:
            return ["disjoint"]
        return {"included": ["included"], "excluded": ["excluded"], "both": ["included", "excluded"]}[self.self_match]


@dataclass
class DataOptions:
    """Which data, and how its images are normalised for the encoder."""

    data_root: Path | None = option(None, help="Dataset folder (default: data/<dataset>).", recorded=False)
    data_source: Literal["official", "synthetic"] | None = option(
        None, help="official or synthetic (generated data, never compared with the paper). Default: synthetic "
                   "when the data holds the generated-data marker (python -m probes.data synth writes it), else "
                   "official; official on marked data is an error.")
    skip_bad_items: bool = option(False, recorded=False, help=(
        "Leave out the items that fail the data check before the run (missing or undecodable images, keypoints "
        "outside the image, labels out of range) instead of stopping; the records say how many and which."))

    def resolve_root(self, dataset: str, layout: str) -> Path:
        """``data_root`` (default ``data/<dataset>``) made absolute, so that the saved configuration works from
        any directory; an error naming the expected layout and the download command when it is absent.
        Generated data (probes.data.generated) sets ``data_source`` to synthetic."""
        from probes.data.generated import find_marker

        root = Path(self.data_root) if self.data_root is not None else Path("data") / dataset
        root = root.expanduser().resolve()
        if not root.exists():
            raise ConfigError(f"--data-root {root}: does not exist; pass the folder holding {layout}. To fetch it: "
                              f"python -m probes.data download {dataset} --root {root} && "
                              f"python -m probes.data prepare {dataset} --root {root}")
        marker = find_marker(root)
        if marker is not None and self.data_source == "official":
            raise ConfigError(f"--data-source official: {root} is generated data (marker {marker}); results on it "
                              f"are recorded as synthetic and never compared with the paper. Leave --data-source out, "
                              f"or pass the real dataset's folder as --data-root")
        self.data_source = "synthetic" if marker is not None else (self.data_source or "official")
        self.data_root = root
        return root


@dataclass
class InputDataOptions(DataOptions):
    """Data whose images the suite normalises for the encoder itself."""

    normalize: Literal["imagenet", "model"] | None = option(
        None, help="Input statistics: ImageNet mean/std for every model (the official code) or each model's "
                   "own. Default: the preset's.")


@dataclass
class ImageDataOptions(InputDataOptions):
    """Data whose items may be whole images (CIFAR-10, image folders)."""

    image_transform: Literal["resize", "eval"] | None = option(
        None, help="Whole images (CIFAR-10, image folders): resized to the encoder's input size (PIL bicubic), "
                   "or the encoder's own eval transform (Resize + CenterCrop). Default: the preset's.",
        recorded=False)
