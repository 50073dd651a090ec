"""Attentive probe on frozen token maps: one learned query cross-attends to the encoder's output tokens
(Zhu et al., Table 3 "Attentive"; Table 1).

    python probes/attentive_probe.py --model dino --dataset cub --data-root data/cub
    python probes/attentive_probe.py --model cae --dataset imagenet --data-root /data/imagenet --preset cae-attentive

Tasks, transforms and recipes as the linear probe (probes/classification.py). Heads (probes/heads.py, each a
copy of its reference; docs/protocols.md#attentive-probe-variants): ``partaware`` (the official code's
`DecoderBlockSimple` + `LP_BatchNorm` with batch statistics at evaluation), ``cae``, ``vjepa``, ``capi``.
Keys/values are all output tokens after the final norm, CLS included (``--tokens all``, as the official
code), or the patch tokens only (``--tokens patch``; CAPI's default).

Token maps are cached on disk (float32) when train + eval maps fit in ``--token-cache-gb``; otherwise, or
with ``--stream``, the frozen encoder runs on every training batch of every epoch, as the reference does.
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from dataclasses import dataclass
from typing import Literal

import torch

from probes import classification, experiment
from probes.features import encode_batch, extract
from probes.heads import build_head
from probes.options import ConfigError, option, section
from probes.results import data_digest, make_record
from probes.train import EncoderSource, TensorSource, default_device, train_probe

DEFAULT_TOKENS = {"partaware": "all", "cae": "all", "vjepa": "all", "capi": "patch"}
BYTES_PER_VALUE = 4   # token maps are cached as float32


@dataclass
class AttentiveProtocol:
    head: Literal["partaware", "cae", "vjepa", "capi"] | None = option(
        None, help="Attentive head variant. Default: the preset's.")
    block: int | None = option(None, recorded=False, help="Attend to block K's tokens (0-based, before the final "
                                                          "norm) instead of the final output.")
    tokens: Literal["all", "patch"] | None = option(
        None, help="Keys/values: all tokens incl. CLS (the official code) or the patch tokens only (CAPI). "
                   "Default: the head's reference.")
    bn_eval: Literal["batch", "running"] = option(
        "batch", help="partaware/cae BatchNorm at evaluation: batch statistics (the reference code) or running.")
    num_heads: int | None = option(None, help="Attention heads of the probe (default: the encoder's; CAPI: D/64).")

    def check(self) -> None:
        experiment.check_block(self.block)
        if self.num_heads is not None and self.num_heads < 1:
            raise ConfigError(f"--num-heads {self.num_heads}: expected an integer >= 1")


@dataclass
class TokenSourceOptions:
    """Where the token maps come from; nothing here changes a number."""
    RECORDED = False

    token_cache_gb: float = option(8.0, help="Cache token maps on disk when train + eval fit in this many GiB, "
                                             "else stream them.")
    stream: bool = option(False, help="Never cache token maps; run the encoder on every batch of every epoch.")


@dataclass
class AttentiveProbeConfig(classification.ClassificationExperiment):
    NAME = "attentive_probe"
    PRESETS = classification.presets({"partaware": "partaware", "cae-attentive": "cae", "vjepa": "vjepa"})

    protocol: AttentiveProtocol = section(AttentiveProtocol)
    tokens: TokenSourceOptions = section(TokenSourceOptions)

    def validate(self) -> None:
        super().validate()
        if self.tokens.token_cache_gb < 0:
            raise ConfigError(f"--token-cache-gb {self.tokens.token_cache_gb}: expected >= 0")


def resolve_num_heads(head: str, encoder, dim: int, override: int | None) -> tuple[int | None, str]:
    """(heads, where the number comes from). The references use the encoder's head count (PartAware hard-codes
    12 = ViT-B's); CAPI uses D/64; an encoder without attention (baselines) gets D/64 when it divides, else 1."""
    if override is not None:
        return override, "--num-heads"
    if head == "capi":
        return None, "D/64 (CAPI)"
    blocks = getattr(getattr(encoder, "model", None), "blocks", None)
    if blocks is not None:
        return int(blocks[0].attn.num_heads), "encoder"
    if dim % 64 == 0:
        return dim // 64, "D/64 (encoder without attention heads)"
    return 1, "1 (encoder without attention heads; D not divisible by 64)"


def run(cfg: AttentiveProbeConfig) -> list:
    """The attentive-probe record of one encoder on one task; none while training is unfinished."""
    cfg = experiment.prepare(cfg)
    this = experiment.Run(cfg, "attentive_probe")
    device = default_device(cfg.run.device)
    recipe = cfg.training.resolve("attentive")
    encoder, task = classification.setup(cfg)
    head_name, block = cfg.protocol.head, cfg.protocol.block
    tokens = cfg.protocol.tokens or DEFAULT_TOKENS[head_name]

    sample = encode_batch(encoder, task.eval.dataset[0][0][None], ["tokens"], block)["tokens"]
    num_tokens, dim = sample.shape[1], sample.shape[2]
    heads, heads_source = resolve_num_heads(head_name, encoder, dim, cfg.protocol.num_heads)
    torch.manual_seed(cfg.seed)                      # the head's initialisation
    try:                                             # before the work: the head must fit the tokens
        head = build_head(head_name, dim, task.num_classes, num_heads=heads, bn_eval=cfg.protocol.bn_eval)
    except ValueError as err:       # e.g. CAPI's D/64 heads on features whose width 64 does not divide
        raise ConfigError(f"--head {head_name} on {dim}-d tokens: {err}") from None
    cache_bytes = (len(task.train) + len(task.eval)) * num_tokens * dim * BYTES_PER_VALUE
    streaming = cfg.tokens.stream or cache_bytes > cfg.tokens.token_cache_gb * 2**30
    drop = int(getattr(getattr(encoder, "model", None), "num_prefix_tokens", 1)) if tokens == "patch" else 0
    if streaming:
        train, evaluation = (EncoderSource(encoder, view, "tokens", block, drop, cfg.run.num_workers)
                             for view in (task.train, task.eval))
    else:
        train, evaluation = (TensorSource(extract(encoder, view, ["tokens"], block, cfg.run,
                                                  description=f"{task.dataset} {which} tokens")["tokens"][:, drop:],
                                          torch.as_tensor(view.labels))
                             for which, view in (("train", task.train), ("eval", task.eval)))

    protocol = {**experiment.task_protocol(cfg, encoder, task),
                **classification.recipe_protocol(cfg, recipe, head_name, device), "attentive_variant": head_name,
                "attentive_bn_eval": cfg.protocol.bn_eval if head_name in ("partaware", "cae") else "n/a",
                "num_heads": getattr(head, "num_heads", heads) if head_name == "capi" else heads,
                "tokens": tokens, "num_tokens": num_tokens - drop}
    notes = {**classification.recipe_notes(recipe, task), "num_heads_source": heads_source,
             "token_source": "stream" if streaming else "cache"}
    data_sha256 = data_digest(task.train.identity(), task.eval.identity())
    fingerprint = {"probe": "attentive_probe", "encoder": encoder.identity(), "data": data_sha256, "block": block,
                   "protocol": protocol, "seed": cfg.seed, "token_source": notes["token_source"]}
    result = train_probe(head, train, evaluation, recipe, num_classes=task.num_classes, seed=cfg.seed, device=device,
                         fingerprint=fingerprint, stop_after_epochs=cfg.training.stop_after_epochs,
                         progress=not cfg.run.quiet)
    if classification.unfinished(result, recipe):
        return []
    this.add(make_record(probe="attentive_probe", dataset=task.dataset, split=task.eval.split,
                         encoder_info=encoder.info(), feature="tokens", block=block, protocol=protocol,
                         metrics=result.selection(), seed=cfg.seed, wall_time_s=this.elapsed(), device=str(device),
                         notes=[classification.epochs_note(result.history)], protocol_notes=notes,
                         data_sha256=data_sha256, model=experiment.model_label(cfg, encoder),
                         artifacts={"history": "history.csv", "per_class": "per_class.csv"}),
             {"history.csv": classification.history_csv(result.history),
              "per_class.csv": classification.per_class_csv(head, evaluation, recipe, device, task.class_names)})
    return this.finish(headline=classification.selection_headline)


main = experiment.entry_point(AttentiveProbeConfig, run, __doc__)

if __name__ == "__main__":
    main()
