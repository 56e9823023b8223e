"""`--set key=value`: the grammar every command shares, and the configs built from it.

    parse_overrides(["lr=1e-3", "model.hidden_size=64"])
        -> {"optim.lr": 0.001, "model.hidden_size": 64}

Keys are `<section>.<field>`, the sections being the config classes of a run:
    model.<field>                 GemmaConfig: both stacks of an encoder-decoder, or the
                                  decoder-only model
    model.encoder.<field>, model.decoder.<field>   one stack
    model.cross_attn_warmup_steps, model.tie_all_embeddings, model.merged_attention
                                  EncDecConfig
    optim.<field>                 training.optim.OptimConfig
    train.<field>                 training.train.TrainConfig
    data.<field>                  text.batching.DataConfig
A bare field name works when only one section has it (`lr=3e-3`). Values are parsed by the
field's type: numbers, true/false, none (Optional fields), comma-separated lists (tuples).
Unknown, ambiguous or unparsable keys are UsageErrors with the nearest keys; the configs
themselves check the values (validate.py), reported as "invalid <section> config: ...".
"""

from __future__ import annotations

import re

import typing

from ..config import EncDecConfig, GemmaConfig, encdec_preset, preset
from ..text.batching import DataConfig
from ..training.optim import OptimConfig
from ..training.train import TrainConfig
from ..usage import UsageError, did_you_mean

SECTIONS = {"optim": OptimConfig, "train": TrainConfig, "data": DataConfig}
_ENCDEC_TOP = ("tie_all_embeddings", "merged_attention", "cross_attn_warmup_steps")


def _parse_value(text: str, tp, key: str):
    """Convert the text of `--set key=text` to the field's type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"--set {key}={text}: expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"--set {key}={text}: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--set {key}={text}: expected a number") from None
    if tp is tuple or origin is tuple:
        return tuple(s.strip() for s in text.split(",") if s.strip())
    if tp is str:
        return text
    if tp is typing.Any or tp is object:
        return text
    raise UsageError(f"--set {key}={text}: cannot parse a value of type {tp}")


def _known_keys() -> dict:
    """Every settable key -> its type, with the qualified names."""
    keys = {}
    for sec, cls in SECTIONS.items():
        for name, tp in typing.get_type_hints(cls).items():
            keys[f"{sec}.{name}"] = tp
    for name, tp in typing.get_type_hints(GemmaConfig).items():
        keys[f"model.{name}"] = tp
        keys[f"model.encoder.{name}"] = tp
        keys[f"model.decoder.{name}"] = tp
    ed = typing.get_type_hints(EncDecConfig)
    for name in _ENCDEC_TOP:
        keys[f"model.{name}"] = ed[name]
    return keys


def parse_overrides(items) -> dict:
    """["lr=1e-3", "model.hidden_size=64"] -> {"optim.lr": 0.001, "model.hidden_size": 64}.
    Unknown, ambiguous or unparsable keys raise UsageError with the accepted choices."""
    known = _known_keys()
    out = {}
    for item in items or ():
        if "=" not in item:
            raise UsageError(f"--set {item}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in known:
            cands = sorted(k for k in known if k.split(".")[-1] == key
                           and not k.startswith(("model.encoder.", "model.decoder.")))
            if len(cands) == 1:
                key = cands[0]
            elif len(cands) > 1:
                raise UsageError(f"--set {item}: ambiguous key {key!r}, write one of {cands}")
            else:
                raise UsageError(_unknown_key(item, key, known))
        out[key] = _parse_value(text, known[key], key)
    return out


def _unknown_key(item: str, key: str, known: dict) -> str:
    """The message for an unknown --set key: the nearest keys if some are close, else all."""
    short = sorted({k.split(".")[-1] for k in known})
    section, _, name = key.rpartition(".")
    fields = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
    if not section:
        hint = did_you_mean(key, short)
    elif fields:  # a known section: the nearest field of that section
        hint = did_you_mean(name, fields, prefix=section + ".")
    else:
        hint = did_you_mean(key, known)
    if hint:
        return f"--set {item}: unknown key {key!r}{hint}"
    return (f"--set {item}: unknown key {key!r}; known keys: {', '.join(short)} (optionally "
            f"qualified as model.*, model.encoder.*, model.decoder.*, optim.*, train.*, data.*)")


def section(overrides: dict, name: str) -> dict:
    """The overrides of one section, by field: section({"optim.lr": 1}, "optim") ->
    {"lr": 1}."""
    p = name + "."
    return {k[len(p):]: v for k, v in overrides.items() if k.startswith(p)}


def checked_set(what: str, overrides: dict, prefix: str, build):
    """build(), with a config's complaint about a field ("OptimConfig.lr: expected ...")
    told as the --set key the user wrote ("--set optim.lr=-1: expected ..."); other
    complaints as checked() tells them."""
    try:
        return build()
    except (ValueError, TypeError) as e:
        m = re.match(r"^\w+Config\.(\w+): (.*)$", str(e), re.S)
        if m:
            keys = [k for k in overrides if k.startswith(prefix) and k.rpartition(".")[2]
                    == m.group(1)]
            if keys:
                raise UsageError(f"--set {keys[0]}={overrides[keys[0]]}: {m.group(2)}") \
                    from None
        raise UsageError(f"invalid {what}: {e}") from None


def build_section(overrides: dict, name: str):
    """The config of section `name` (optim, train, data) from its defaults and overrides."""
    return checked_set(f"{name} config", overrides, name + ".",
                       lambda: SECTIONS[name](**section(overrides, name)))


def build_model_config(arch: str, preset_name: str, model_overrides: dict, base=None):
    """The model config from a preset (or a given base config) and model.* overrides."""
    both = {k: v for k, v in model_overrides.items()
            if "." not in k and k not in _ENCDEC_TOP}
    top = {k: v for k, v in model_overrides.items() if k in _ENCDEC_TOP}
    enc = {k.split(".", 1)[1]: v for k, v in model_overrides.items() if k.startswith("encoder.")}
    dec = {k.split(".", 1)[1]: v for k, v in model_overrides.items() if k.startswith("decoder.")}
    keyed = {f"model.{k}": v for k, v in model_overrides.items()}
    if arch == "decoder":
        if base is None and "-" in preset_name:
            raise UsageError(f"--preset {preset_name}: ENC-DEC names an encoder-decoder; add "
                             f"--arch encdec, or give one preset for a decoder-only model")
        if top or enc or dec:
            bad = sorted(list(top) + [f"encoder.{k}" for k in enc] + [f"decoder.{k}" for k in dec])
            raise UsageError(f"--set model.{bad[0]}: only for encoder-decoder models "
                             f"(--arch encdec)")

        def build():
            cfg = base if base is not None else preset(preset_name)
            return cfg.replace(**both) if both else cfg
        return checked_set("model config", keyed, "model.", build)

    def build():
        if base is not None:
            cfg = base
        else:
            cfg = encdec_preset(preset_name)
        e = cfg.encoder.replace(**{**both, **enc}) if (both or enc) else cfg.encoder
        d = cfg.decoder.replace(**{**both, **dec}) if (both or dec) else cfg.decoder
        return cfg.replace(encoder=e, decoder=d, **top)
    return checked_set("model config", keyed, "model.", build)
