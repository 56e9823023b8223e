# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10. Hugging Face interop: to `transformers` and back
#
# A model here is a config plus one flat dict of NumPy arrays whose keys are the Hugging
# Face parameter names, weights stored `[out, in]` (SPEC.md section 5):
#
#     model.encoder.layers.0.self_attn.q_proj.weight      (H*Dh, De)
#     model.decoder.layers.0.cross_attn.k_proj.weight     (K*Dh, De)
#     model.decoder.embed_tokens.weight                    (V, Dd)   also the output matrix
#
# So moving a checkpoint between the two libraries is a *name identity*: the tensors pass
# through unchanged, only `config.json` is translated (`mini_encdec/storage/hf_config.py`).
# `mini_encdec/storage/interop.py` reads and writes `save_pretrained` directories without
# importing torch (safetensors files are read by our own reader, bfloat16 upcast to
# float32 exactly):
#
#     model = load_hf(path)        Gemma2ForCausalLM -> GemmaLM, T5GemmaForConditionalGeneration
#                                  -> EncDecLM, the *ForSequenceClassification -> SequenceClassifier
#     save_hf(model, path, dtype)  the directory transformers' from_pretrained loads
#
# This tutorial round-trips a tiny T5Gemma through files, then, when `torch` and
# `transformers` are installed (`pip install -e ".[parity]"`), through `transformers`
# itself, comparing logits; without them those cells say so and skip.
#
# Known differences, said here because a user will meet them: transformers >= 5 lets
# T5Gemma's encoder local layers see `|q - k| <= W` where SPEC.md section 2 (and transformers 4.5x)
# use `< W`, so outputs differ for encoder inputs longer than the window (our examples
# stay within it); transformers' "sdpa" attention ignores the attention soft-cap, so
# comparisons use `attn_implementation="eager"`. T5Gemma 2's options (tutorial 9) have no
# T5Gemma checkpoint format: `save_hf` refuses them with a clear error.

# %%
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.config import EncDecConfig, GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.storage.interop import InteropError, load_hf, save_hf
from mini_encdec.training.adapt import adapt_command

set_backend("numpy")  # the readable reference; no compilation on a first run
rng = np.random.default_rng(0)
work = Path(tempfile.mkdtemp(prefix="mini_encdec_interop_"))  # never the repository

# %% [markdown]
# ## Saving and loading, no torch involved
#
# A tiny unbalanced T5Gemma (encoder width 32, decoder width 24) with random weights; to
# make the comparison meaningful, the norm weights are random too (fresh ones are 0).

# %%
V = 64
encoder = GemmaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, intermediate_size=48,
                      sliding_window=8, query_pre_attn_scalar=6)
decoder = encoder.replace(hidden_size=24, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=40)
model = build_model(EncDecConfig(encoder=encoder, decoder=decoder), seed=0)
for key in model.params:
    if "norm" in key:
        model.params[key] = rng.normal(0, 0.3, model.params[key].shape).astype(np.float32)

path = save_hf(model, work / "t5gemma-tiny")
print(sorted(p.name for p in path.iterdir()))
config_json = json.loads((path / "config.json").read_text())
print({k: config_json[k] for k in ("architectures", "model_type", "vocab_size")},
      "encoder hidden_size", config_json["encoder"]["hidden_size"],
      "decoder hidden_size", config_json["decoder"]["hidden_size"])

back = load_hf(path)
assert back.config == model.config and list(back.params) == list(model.params)
assert all(np.array_equal(back.params[k], v) for k, v in model.params.items())

# %% [markdown]
# **Half precision.** Released checkpoints are often bfloat16, which NumPy lacks: we
# store and read its bits ourselves, rounding to nearest even on save and upcasting
# exactly on load. bfloat16 keeps float32's exponent but only 8 significant bits (7
# stored), so rounding to nearest moves a weight by at most half a unit in the last
# place, `2^-8` of its size; the file is half the size.

# %%
half = save_hf(model, work / "t5gemma-tiny-bf16", dtype="bfloat16")
back16 = load_hf(half)
worst = max(float(np.max(np.abs(back16.params[k] - v) / np.maximum(np.abs(v), 1e-30)))
            for k, v in model.params.items())
sizes = [(p / "model.safetensors").stat().st_size for p in (path, half)]
print(f"float32 file {sizes[0]:,} bytes, bfloat16 file {sizes[1]:,} bytes; "
      f"largest relative rounding error {worst:.2e} (2^-8 = {2 ** -8:.2e})")
assert worst <= 2 ** -8 and sizes[1] < 0.6 * sizes[0]

try:  # T5Gemma 2's options have no checkpoint format in transformers' T5Gemma
    save_hf(build_model(EncDecConfig(encoder=encoder, decoder=encoder,
                                     merged_attention=True), seed=0), work / "t5g2")
except InteropError as e:
    print("refused:", e)
else:
    raise AssertionError("save_hf wrote a merged-attention model")

# %% [markdown]
# ## Through `transformers`
#
# When `torch` and `transformers` are installed: `from_pretrained` on our directory must
# report no missing, unexpected or mismatched keys, and its logits must equal ours. Then
# the other way: a random `Gemma2ForCausalLM` saved by `transformers` loads here with
# the same logits, our `adapt` command turns that directory into a T5Gemma directory
# ("HF in, HF out", streamed tensor by tensor), and `transformers` loads the result and
# agrees with us on it too.

# %%
HAVE_TRANSFORMERS = all(importlib.util.find_spec(m) is not None
                        for m in ("torch", "transformers"))
if not HAVE_TRANSFORMERS:
    print("torch/transformers not installed: skipping the round trip through transformers "
          "(pip install -e '.[parity]' to run it)")

# %%
differences = {}
if HAVE_TRANSFORMERS:
    import torch
    import transformers
    from transformers import (Gemma2Config, Gemma2ForCausalLM, T5GemmaForConditionalGeneration)

    transformers.utils.logging.disable_progress_bar()

    hf, info = T5GemmaForConditionalGeneration.from_pretrained(
        path, attn_implementation="eager", output_loading_info=True)
    print("loading info:", {k: len(v) for k, v in info.items()})
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))

    S, T = 7, 5                                            # shorter than the window W = 8
    ids = rng.integers(4, V, size=(2, S))
    mask = np.ones((2, S), dtype=np.int64)
    mask[1, 5:], ids[1, 5:] = 0, 0                         # a right-padded second source
    dec_ids = np.concatenate([np.full((2, 1), 2), rng.integers(4, V, size=(2, T - 1))], 1)
    ours = model.forward({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec_ids})
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec_ids)).logits.numpy()
    differences["T5Gemma, ours -> transformers"] = float(np.max(np.abs(ours - theirs)))

    # the other way: transformers writes, we read
    torch.manual_seed(0)
    g2 = Gemma2ForCausalLM(Gemma2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        head_dim=8, intermediate_size=48, sliding_window=4,
                                        query_pre_attn_scalar=8,
                                        attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in g2.parameters():
            p.normal_(0, 0.3)
    g2.save_pretrained(work / "gemma2-tiny")
    g2_ours = load_hf(work / "gemma2-tiny")
    prompt = rng.integers(4, V, size=(2, 6))               # 6 > window 4: local layers matter
    with torch.no_grad():
        theirs = g2(input_ids=torch.tensor(prompt)).logits.numpy()
    differences["Gemma 2, transformers -> ours"] = float(np.max(np.abs(
        g2_ours.forward({"input_ids": prompt}) - theirs)))

    # HF in, HF out: adapt the transformers directory into a T5Gemma directory
    adapted_dir = adapt_command(work / "gemma2-tiny", None, work / "t5gemma-adapted",
                                print_fn=None, progress=False)
    t5_hf = T5GemmaForConditionalGeneration.from_pretrained(adapted_dir,
                                                            attn_implementation="eager")
    t5_ours = load_hf(adapted_dir)
    src = rng.integers(4, V, size=(2, 4))                  # encoder input within the window
    with torch.no_grad():
        theirs = t5_hf(input_ids=torch.tensor(src),
                       decoder_input_ids=torch.tensor(prompt)).logits.numpy()
    differences["adapted T5Gemma, ours -> transformers"] = float(np.max(np.abs(
        t5_ours.forward({"input_ids": src, "decoder_input_ids": prompt}) - theirs)))

    for name, diff in differences.items():
        print(f"{name:40s} max |logit difference| {diff:.1e}")
    assert all(diff < 1e-4 for diff in differences.values())

    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(4, 4))
        t5_theirs = theirs.reshape(-1)
        t5_mine = t5_ours.forward({"input_ids": src, "decoder_input_ids": prompt}).reshape(-1)
        ax.scatter(t5_theirs, t5_mine, s=3)
        ax.set_xlabel("transformers logit")
        ax.set_ylabel("mini_encdec logit")
        ax.set_title("adapted T5Gemma, every logit", fontsize=9)
        save(fig, "10_logits_agree.png")

# %% [markdown]
# The parity tests (`python -m pytest -m parity`, `tests/test_parity_hf.py`) go further:
# losses, every parameter gradient, padding in every position, windows shorter than the
# sequences, 20 steps of greedy generation against `generate`, and the classifier heads.
#
# Next: tutorial 11 opens the Numba kernels behind the default backend.

# %%
shutil.rmtree(work)  # the directories written above
