"""Attentive probe on frozen token maps: one learned query cross-attends to the encoder's output tokens.

Same tasks, transforms and options as probes/linear_probe.py (``--dataset cub|coco|cifar10|imagenet|folder``).
Heads (probes/heads.py, each a copy of its reference): ``partaware`` (default; the official code's
`DecoderBlockSimple` + `LP_BatchNorm` with batch statistics at evaluation), ``cae``, ``vjepa``, ``capi``.
Keys/values are all output tokens after the final norm, CLS included (``--tokens all``, as the official
code), or the patch tokens only (``--tokens patch``; CAPI's default).

Token maps are cached on disk (probes.features, float32) when train + eval maps fit in
``--token-cache-gb`` (default 8 GiB; they are also held in memory while training); otherwise, or with
``--stream``, the frozen encoder runs on every training batch of every epoch, as the reference does.

    python probes/attentive_probe.py --model dino --dataset cub --data-root data/cub
    python probes/attentive_probe.py --model cae --dataset imagenet --data-root /data/imagenet \
        --head cae --preset cae-attentive
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from probes import paths
from probes.features import cached_extraction
from probes.heads import ATTENTIVE_HEADS, BN_EVAL_MODES, build_head
from probes.encoders import forward_identity, shuffled_mae_tokens
from probes.linear_probe import (Task, add_common_arguments, fmt, load_encoder_and_task, mae_shuffle_applies,
                                 mae_shuffle_protocol, on_off, parse_arch, print_table, recipe_protocol,
                                 recipe_with_overrides)
from probes.results import make_record, write_record
from probes.train import EncoderSource, TensorSource, precision_name, train_probe

TOKEN_SETS = ("all", "patch")
DEFAULT_TOKENS = {"partaware": "all", "cae": "all", "vjepa": "all", "capi": "patch"}
BYTES_PER_VALUE = 4   # token maps are cached as float32


def encoder_num_heads(encoder) -> int | None:
    """The attention head count of a ViT encoder's blocks (None for baselines and ResNets)."""
    blocks = getattr(getattr(encoder, "model", None), "blocks", None)
    try:
        return int(blocks[0].attn.num_heads)
    except (TypeError, AttributeError, IndexError):
        return None


def resolve_num_heads(head: str, encoder, dim: int, override: int | None) -> tuple[int | None, str]:
    """(heads, where the number comes from). The references use the encoder's head count (PartAware hard-codes
    12 = ViT-B's); CAPI uses D/64; an encoder without attention (baselines) gets D/64 when it divides, else 1."""
    if override is not None:
        return override, "--num-heads"
    if head == "capi":
        return None, "D/64 (CAPI)"
    heads = encoder_num_heads(encoder)
    if heads is not None:
        return heads, "encoder"
    if dim % 64 == 0:
        return dim // 64, "D/64 (encoder without attention heads)"
    return 1, "1 (encoder without attention heads; D not divisible by 64)"


def prefix_tokens(encoder) -> int:
    return int(getattr(getattr(encoder, "model", None), "num_prefix_tokens", 1))


def token_batch(encoder, images: torch.Tensor, block: int | None) -> torch.Tensor:
    """[B, T, D] tokens: after the final norm, or block k's output before it."""
    if block is None:
        return encoder.features(images, "tokens")
    out = encoder.features(images, "block", block=block)
    if out.ndim != 3:
        raise ValueError(f"block {block} of {type(encoder).__name__} gives shape {tuple(out.shape)}, not tokens")
    return out


def token_maps(encoder, task: Task, block: int | None, batch_size: int, num_workers: int,
               progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) token maps [N, T, D], cached on disk in shards (resumable)."""
    out = []
    for which, dataset in (("train", task.train), ("eval", task.eval)):
        def compute(items, missing_columns, dataset=dataset):
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(items)), batch_size=batch_size,
                                                 shuffle=False, num_workers=num_workers)
            return {"tokens": torch.cat([token_batch(encoder, images, block).float() for images, _ in loader])}

        key = {"encoder": encoder.info(), "data": task.identity[which], "purpose": "classification",
               "feature": "tokens", "block": block, **forward_identity(encoder)}
        out.append(cached_extraction(len(dataset), ["tokens"], compute, cache_key=key, progress=progress,
                                     description=f"{task.dataset} {which} tokens")["tokens"])
    return out[0], out[1]


def run(model: str, dataset: str, data_root, *, head: str = "partaware", preset: str = "partaware",
        block: int | None = None, tokens: str | None = None, bn_eval: str = "batch", num_heads: int | None = None,
        epochs: int | None = None, batch_size: int | None = None, eval_batch_size: int | None = None,
        lr: float | None = None, base_lr: float | None = None, warmup_epochs: float | None = None, seed: int = 0,
        device: str | None = None,
        results: str | os.PathLike | None = None, crop: str = "official-code", keypoints: str = "paper",
        normalize: str | None = None, coco_dist_scope: str = "code_exact", token_cache_gb: float = 8.0,
        stream: bool = False, extract_batch_size: int = 64, num_workers: int = 0, format: str | None = None,
        arch=None, encoder=None, data_source: str | None = "official", stop_after_epochs: int | None = None,
        progress: bool = True, mae_token_shuffle: bool | None = None, branch: str = "teacher") -> dict[str, Any]:
    """Attentive probe of ``model`` on ``dataset``; writes the record and returns
    ``{"attentive": {...}, "history": [...], "records": [paths], "token_source": "cache" | "stream"}``."""
    started = time.time()
    if head not in ATTENTIVE_HEADS:
        raise ValueError(f"the attentive probe trains {ATTENTIVE_HEADS}; for {head!r} use probes/linear_probe.py")
    tokens = tokens or DEFAULT_TOKENS[head]
    if tokens not in TOKEN_SETS:
        raise ValueError(f"tokens must be one of {TOKEN_SETS}, got {tokens!r}")
    if bn_eval not in BN_EVAL_MODES:
        raise ValueError(f"bn_eval must be one of {BN_EVAL_MODES}, got {bn_eval!r}")
    if lr is not None and base_lr is not None:
        raise ValueError("give --lr (absolute) or --base-lr (scaled by batch/256), not both")
    if token_cache_gb < 0:
        raise ValueError(f"token cache budget must be >= 0 GiB, got {token_cache_gb}")
    recipe = recipe_with_overrides(preset, "attentive", epochs=epochs, batch_size=batch_size,
                                   eval_batch_size=eval_batch_size, lr=lr, base_lr=base_lr, warmup_epochs=warmup_epochs)
    run_device, encoder, task = load_encoder_and_task(model, dataset, data_root, encoder, format=format, arch=arch,
                                                      device=device, crop=crop, normalize=normalize,
                                                      coco_dist_scope=coco_dist_scope, keypoints=keypoints,
                                                      branch=branch)
    shuffle = mae_shuffle_applies(mae_token_shuffle, preset, dataset, encoder)
    with shuffled_mae_tokens(encoder, shuffle, seed=seed):
        info = encoder.info()

        # Size of the cached maps, from one sample's token count.
        sample = token_batch(encoder, task.eval[0][0][None], block)
        num_tokens, dim = sample.shape[1], sample.shape[2]
        cache_bytes = (len(task.train) + len(task.eval)) * num_tokens * dim * BYTES_PER_VALUE
        use_stream = stream or cache_bytes > token_cache_gb * 2**30
        drop = prefix_tokens(encoder) if tokens == "patch" else 0
        if use_stream:
            feature = "tokens" if block is None else "block"
            train_source = EncoderSource(encoder, task.train, feature, task.train_labels, block=block, drop_prefix=drop,
                                         num_workers=num_workers)
            eval_source = EncoderSource(encoder, task.eval, feature, task.eval_labels, block=block, drop_prefix=drop,
                                        num_workers=num_workers)
        else:
            train_t, eval_t = token_maps(encoder, task, block, extract_batch_size, num_workers, progress)
            train_source = TensorSource(train_t[:, drop:], task.train_labels)
            eval_source = TensorSource(eval_t[:, drop:], task.eval_labels)

        heads, heads_source = resolve_num_heads(head, encoder, dim, num_heads)
        torch.manual_seed(seed)                      # the head's initialisation
        probe_head = build_head(head, dim, task.num_classes, num_heads=heads, bn_eval=bn_eval)
        data_protocol = {**task.protocol, **({"data_source": data_source} if data_source else {}),
                         **mae_shuffle_protocol(encoder, shuffle, seed)}
        protocol = {**data_protocol, **recipe_protocol(recipe, head), "attentive_variant": head,
                    "attentive_bn_eval": bn_eval if head in ("partaware", "cae") else "n/a (no batch statistics)",
                    "num_heads": getattr(probe_head, "num_heads", heads) if head == "capi" else heads,
                    "num_heads_source": heads_source, "tokens": tokens, "num_tokens": num_tokens - drop,
                    "precision": precision_name(run_device)}
        fingerprint = {"probe": "attentive_probe", "encoder": info, "data": task.identity, "block": block,
                       "protocol": protocol, "seed": seed, "token_source": "stream" if use_stream else "cache"}
        result = train_probe(probe_head, train_source, eval_source, recipe, num_classes=task.num_classes, seed=seed,
                             device=run_device, fingerprint=fingerprint, stop_after_epochs=stop_after_epochs,
                             progress=progress)
        out: dict[str, Any] = {"history": result.history, "records": [], "attentive": None,
                               "token_source": "stream" if use_stream else "cache", "token_cache_bytes": cache_bytes,
                               "resumed_from_epoch": result.resumed_from_epoch}
        if result.epochs_done < recipe.epochs:
            print(f"stopped after {result.epochs_done}/{recipe.epochs} epochs; rerun the same command to resume "
                  f"(no record is written for an unfinished run)")
            return out
        selection = result.selection()
        out["attentive"] = selection
        config = {"script": "attentive_probe", "model": model or info["name"], "dataset": dataset,
                  "data_root": str(data_root), "head": head, "preset": preset, "block": block, "tokens": tokens,
                  "bn_eval": bn_eval, "num_heads": num_heads, "recipe": recipe.to_dict(), "seed": seed,
                  "device": str(run_device), "crop": crop, "keypoints": keypoints,
                  "normalize": task.protocol.get("normalize"), "coco_dist_scope": coco_dist_scope,
                  "token_cache_gb": token_cache_gb, "stream": stream, "token_source": out["token_source"],
                  "extract_batch_size": extract_batch_size, "num_workers": num_workers, "data_source": data_source}
        record = make_record(probe="attentive_probe", dataset=task.dataset, split=task.eval_split, encoder_info=info,
                             feature="tokens", block=block, protocol=protocol, metrics=selection, seed=seed,
                             wall_time_s=time.time() - started, device=str(run_device),
                             notes=["top1 per epoch: " + json.dumps([round(h["top1"], 4) for h in result.history])])
        results_dir = Path(results) if results is not None else paths.results_dir()
        out["records"].append(write_record(record, results_dir, config=config))
        print_table([{"model": info["name"], "dataset": task.dataset, "probe": f"attentive ({head}, {preset})",
                      "top1_best": f"{fmt(selection['top1_best'])} (epoch {selection['best_epoch']})",
                      "top1_last": fmt(selection["top1_last"])}])
        return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--head", default="partaware", choices=ATTENTIVE_HEADS, help="attentive head variant")
    parser.add_argument("--feature", default="tokens", choices=("tokens",),
                        help="the keys/values: the encoder's output tokens (with --block: that block's tokens)")
    parser.add_argument("--tokens", default=None, choices=TOKEN_SETS,
                        help="all tokens incl. CLS (default; CAPI: patch) or patch tokens only")
    parser.add_argument("--bn-eval", default="batch", choices=BN_EVAL_MODES,
                        help="partaware/cae BatchNorm at evaluation: batch statistics (the reference code) or running")
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (default: the encoder's)")
    parser.add_argument("--token-cache-gb", type=float, default=8.0,
                        help="cache token maps on disk when train + eval fit in this many GiB, else stream")
    parser.add_argument("--stream", action="store_true", help="never cache token maps; run the encoder every epoch")
    args = parser.parse_args(argv)
    return run(args.model, args.dataset, args.data_root, head=args.head, preset=args.preset, block=args.block,
               tokens=args.tokens, bn_eval=args.bn_eval, num_heads=args.num_heads, epochs=args.epochs,
               batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, lr=args.lr, base_lr=args.base_lr,
               warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device, results=args.results, crop=args.crop, keypoints=args.keypoints,
               normalize=args.normalize, coco_dist_scope=args.coco_dist_scope, token_cache_gb=args.token_cache_gb,
               stream=args.stream, extract_batch_size=args.extract_batch_size, num_workers=args.num_workers,
               format=args.format, arch=parse_arch(args.arch, args.arch_kwargs), data_source=args.data_source,
               stop_after_epochs=args.stop_after_epochs, progress=not args.quiet,
               mae_token_shuffle=on_off(args.mae_token_shuffle), branch=args.branch)


if __name__ == "__main__":
    main()
