"""Fine-tuning and evaluation on the downstream tasks, with baselines and like-for-like
inference costs (SPEC.md section 7). The demo and the study both use it, so the two
architectures are always fine-tuned and measured by the same code.

Tasks (from the plays; training examples from the training plays, evaluation examples
from the validation plays; every input starts with its task prefix, tasks.TASK_PREFIXES):

  reply   a speech -> the next speech by another speaker (generation)
  genre   a speech -> its play's genre, one of 6 (classification)

Two fine-tuned models per pre-trained model, with the same budget for both architectures:

  the generation model   the language model itself, fine-tuned on a mixture of reply
                         examples and genre examples written as text (target = the genre's
                         name), so one model does both tasks, told apart by their prefixes
  the probe              models/classifier.py: a classification head on the last real
                         token (the encoder's for the encoder-decoder, the paper's SuperGLUE
                         set-up; the model's for the decoder-only), everything fine-tuned

Metrics, each beside its baseline (what a model must beat to have learnt anything):

  reply NLL per token      baseline: a unigram model of the training replies (add-one)
  reply ROUGE-L F1 (greedy) baseline: copying the input speech (without its prefix)
  genre accuracy, rank classification with the generation model (the genre name with the
                           lowest NLL)       baselines: chance (1/6) and the majority class
  genre accuracy, probe    same baselines

Inference cost, like for like (`inference_cost`): FLOPs and measured latency at batch 1 for
the same prompt length and the same forced number of generated tokens (no early stop at
EOS), split into the prompt cost (the encoder pass, or the decoder-only prefill) and the
cost per generated token.

The command line's `finetune` and `evaluate --task` score their tasks (reply, and the
synthetic reverse / sort / addition) with `task_metric`: greedy outputs, ROUGE-L or exact
match.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..text.corpus import GENRES
from ..objectives.example import Example
from ..text.tasks import (exact_match, genre_examples, reply_examples, rouge_l,
                          task_prefix)


# --- the data ------------------------------------------------------------------------------------

@dataclass
class TaskData:
    """Every example the fine-tuning and evaluation of one seed uses (built once)."""

    encoder_length: int        # S (decoder-only examples are S + T long)
    decoder_length: int        # T
    mixture: list              # Examples: reply + genre-as-text, training plays
    genre_train: list          # ClassExamples for the probe, training plays
    reply_val: list            # Examples, validation plays
    genre_val: list            # ClassExamples, validation plays
    genre_names: list          # token ids of each genre's name + EOS (rank classification)
    generate_examples: int     # how many reply_val examples are generated (ROUGE-L)
    reply_prefix: tuple        # the reply task prefix's ids (stripped for the copy baseline)
    eos_id: int
    pad_id: int
    bos_id: int

    @property
    def prefix_len(self) -> int:
        """Tokens of the reply task prefix."""
        return len(self.reply_prefix)


def _subsample(xs: list, limit: int, rng: np.random.Generator) -> list:
    """At most `limit` examples (0: all of them) drawn without replacement, in random
    order: any prefix of the result is itself a random sample (the examples come in play
    order, so a prefix of the unshuffled list would hold only the first plays)."""
    return [xs[i] for i in rng.permutation(len(xs))[:limit or None]]


def build_task_data(tok, *, encoder_length: int, decoder_length: int, train_examples: int,
                    eval_examples: int, generate_examples: int, seed: int,
                    eval_split: str = "validation",
                    genre_eval_examples: Optional[int] = None) -> TaskData:
    """Training and evaluation examples of both tasks, subsampled with `seed`.

    The mixture holds train_examples reply examples and train_examples // 2 genre ones
    (a random half of the probe's genre examples: every genre appears). The evaluation
    examples come from the plays of `eval_split`: eval_examples replies (0: all) and
    genre_eval_examples genre examples (None: eval_examples); the generated replies are
    the first generate_examples of the (shuffled) replies (0: all)."""
    S, T = encoder_length, decoder_length
    rng = np.random.default_rng([seed, 15])
    names = [np.concatenate([tok.encode(g), [tok.eos_id]]).astype(np.int64) for g in GENRES]
    reply_train = _subsample(reply_examples("train", tok, encoder_length=S, decoder_length=T),
                             train_examples, rng)
    genre_train = _subsample(genre_examples("train", tok, length=S), train_examples, rng)
    genre_text = [Example(e.inputs, names[e.label]) for e in genre_train[:train_examples // 2]]
    reply_val = _subsample(reply_examples(eval_split, tok, encoder_length=S,
                                          decoder_length=T), eval_examples, rng)
    genre_val = _subsample(genre_examples(eval_split, tok, length=S),
                           eval_examples if genre_eval_examples is None else
                           genre_eval_examples, rng)
    return TaskData(S, T, reply_train + genre_text, genre_train, reply_val, genre_val, names,
                    min(generate_examples or len(reply_val), len(reply_val)),
                    tuple(int(t) for t in task_prefix("reply", tok)),
                    tok.eos_id, tok.pad_id, tok.bos_id)


# --- baselines -----------------------------------------------------------------------------------

def baselines(data: TaskData) -> dict:
    """What each metric is without learning the task (see the module docstring)."""
    # unigram model of the training replies (targets), add-one smoothing over the ids seen
    # in training plus one unknown bucket; scored on the validation targets
    counts: dict = {}
    for e in data.mixture:
        if tuple(int(t) for t in e.inputs[:data.prefix_len]) != data.reply_prefix:
            continue  # a genre example: its targets are genre names, not replies
        for t in e.targets:
            counts[int(t)] = counts.get(int(t), 0) + 1
    total, vocab = sum(counts.values()), len(counts) + 1
    nll, n = 0.0, 0
    for e in data.reply_val:
        for t in e.targets:
            nll -= np.log((counts.get(int(t), 0) + 1) / (total + vocab))
            n += 1
    gen = data.reply_val[:data.generate_examples]
    copy = [rouge_l(e.inputs[data.prefix_len:], e.targets, eos_id=data.eos_id) for e in gen]
    train_labels = np.bincount([e.label for e in data.genre_train], minlength=len(GENRES))
    val_labels = np.array([e.label for e in data.genre_val])
    return {"reply_nll_unigram": nll / max(n, 1),
            "reply_rouge_l_copy_input": float(np.mean(copy)) if copy else 0.0,
            "genre_chance": 1.0 / len(GENRES),
            "genre_majority_class": float(np.mean(val_labels == int(train_labels.argmax())))}


# --- fine-tuning ---------------------------------------------------------------------------------

def warmup_steps_for(steps: int) -> int:
    """Linear learning-rate warmup of a run of `steps` updates: a tenth of it, at most 50."""
    return max(1, min(50, steps // 10))


def _optim(lr: float, steps: int):
    from ..training.optim import OptimConfig
    return OptimConfig(lr=lr, warmup_steps=warmup_steps_for(steps), weight_decay=0.01)


def finetune_generation(model, arch: str, data: TaskData, *, steps: int, lr: float,
                        batch_size: int, seed: int, run_dir=None, progress: bool = False,
                        label: str = "") -> list:
    """Fine-tune `model` in place on the reply + genre-as-text mixture; the history.
    With a run_dir, a run interrupted there resumes (a finished one is restored)."""
    from ..text.batching import ExampleBatcher
    from ..config import EncDecConfig
    from ..training.train import train
    if isinstance(model.config, EncDecConfig) and model.config.cross_attn_warmup_steps:
        # the cross-attention warmup belongs to the adaptation stage: fine-tuning trains
        # every parameter from its first update, as for every other model
        model.config = dataclasses.replace(model.config, cross_attn_warmup_steps=0)
    batches = ExampleBatcher(data.mixture, batch_size=batch_size,
                             encoder_length=data.encoder_length,
                             decoder_length=data.decoder_length, arch=arch, seed=seed,
                             pad_id=data.pad_id, bos_id=data.bos_id)
    return train(model, batches, optim=_optim(lr, steps), steps=steps, eval_every=0,
                 checkpoint_every=0, run_dir=run_dir, resume=run_dir is not None,
                 progress=progress, run_info={"stage": label or "finetune generation"})


def _class_batches(examples: list, batch_size: int, length: int, pad_id: int):
    from ..text.tasks import collate_classification
    for i in range(0, len(examples), batch_size):
        b = collate_classification(examples[i:i + batch_size], length, pad_id=pad_id)
        yield {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
               "labels": b["class_labels"]}


class _ClassBatcher:
    """Shuffled classification batches, one permutation per epoch, seeded by position
    (a list source for train(): deterministic and cheap)."""

    def __init__(self, examples: list, batch_size: int, length: int, pad_id: int, seed: int):
        self.examples, self.batch_size, self.length = examples, batch_size, length
        self.pad_id, self.seed, self.epoch, self.cursor = pad_id, seed, 0, 0
        self._order_of = (None, None)  # (epoch, its permutation)

    def _order(self) -> np.ndarray:
        """This epoch's permutation (drawn once per epoch)."""
        if self._order_of[0] != self.epoch:
            rng = np.random.default_rng([self.seed, 16, self.epoch])
            self._order_of = (self.epoch, rng.permutation(len(self.examples)))
        return self._order_of[1]

    def next_batch(self) -> dict:
        if self.cursor + self.batch_size > len(self.examples):
            self.epoch, self.cursor = self.epoch + 1, 0
        order = self._order()
        pick = [self.examples[i] for i in order[self.cursor:self.cursor + self.batch_size]]
        self.cursor += self.batch_size
        return next(_class_batches(pick, self.batch_size, self.length, self.pad_id))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def finetune_probe(model, data: TaskData, *, steps: int, lr: float, batch_size: int,
                   seed: int, run_dir=None, progress: bool = False, label: str = ""):
    """A classification head on `model` (a copy: `model` is left unchanged), fine-tuned on
    genre with everything else; (classifier, history)."""
    from ..models.classifier import SequenceClassifier
    from ..training.train import train
    clf = SequenceClassifier.from_backbone(model, num_labels=len(GENRES), seed=seed,
                                           label_names=GENRES)
    batches = _ClassBatcher(data.genre_train, batch_size, data.encoder_length, data.pad_id,
                            seed)
    history = train(clf, batches, optim=_optim(lr, steps), steps=steps, eval_every=0,
                    checkpoint_every=0, run_dir=run_dir, resume=run_dir is not None,
                    progress=progress, run_info={"stage": label or "finetune probe"})
    return clf, history


# --- evaluation ----------------------------------------------------------------------------------

def probe_accuracy(clf, data: TaskData, batch_size: int = 32) -> float:
    correct = 0
    for b in _class_batches(data.genre_val, batch_size, data.encoder_length, data.pad_id):
        correct += int((clf.forward(b).argmax(axis=-1) == b["labels"]).sum())
    return correct / len(data.genre_val)


def evaluate_generation(model, arch: str, data: TaskData, *, new_tokens: int,
                        genre: bool = True, batch_size: int = 16,
                        progress: bool = False) -> dict:
    """Reply NLL, reply ROUGE-L (greedy, `batch_size` prompts at a time) and, with
    `genre`, genre accuracy by rank classification; plus the generated replies (token
    ids) for samples."""
    from tqdm.auto import tqdm
    from ..models.generate import generate
    from .scoring import mean_token_nll, rank_classify
    S, T = data.encoder_length, data.decoder_length
    gen = data.reply_val[:data.generate_examples]
    # one bar: reply NLL, genre by rank classification, then the generated replies
    bar = tqdm(total=1 + genre + len(gen), desc="evaluate", unit="part",
               disable=not progress, leave=False)
    bar.set_postfix_str("reply NLL")
    res = {"reply_nll": float(mean_token_nll(model, data.reply_val, arch, S, T)),
           "reply_examples": len(data.reply_val), "generated_examples": len(gen)}
    bar.update(1)
    if genre:
        bar.set_postfix_str("genre, rank classification")
        pred = rank_classify(model, [e.inputs for e in data.genre_val], data.genre_names,
                             arch, S, T)
        res["genre_rank_accuracy"] = float(np.mean(pred == np.array([e.label for e in
                                                                     data.genre_val])))
        res["predicted_genres"] = np.bincount(pred, minlength=len(GENRES)).tolist()
        bar.update(1)
    bar.set_postfix_str("greedy replies")
    outs = []
    for i in range(0, len(gen), batch_size):
        chunk = gen[i:i + batch_size]
        out = generate(model, [[int(t) for t in e.inputs] for e in chunk],
                       max_new_tokens=new_tokens)
        outs.extend(out)
        bar.update(len(chunk))
    bar.close()
    rouge = [rouge_l(o, e.targets, eos_id=data.eos_id) for o, e in zip(outs, gen)]
    if rouge:  # none generated: no ROUGE-L (absent, never NaN)
        res["reply_rouge_l"] = float(np.mean(rouge))
    res["replies"] = [[int(t) for t in o] for o in outs]
    return res


def task_metric(model, task: str, examples: list, *, batch_size: int = 16,
                max_new_tokens: int = 64, progress: bool = False) -> dict:
    """Greedy outputs of a fine-tuning task (`finetune`, `evaluate --task`) scored: exact
    match (the synthetic tasks) or ROUGE-L (reply). progress: a tqdm bar over the examples
    on stderr."""
    from tqdm import tqdm
    from ..models.generate import generate
    preds, refs = [], []
    with tqdm(total=len(examples), desc=f"{task}: generating", unit="example",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            out = generate(model, [e.inputs for e in chunk], max_new_tokens=max_new_tokens)
            preds.extend(list(out))
            refs.extend(e.targets for e in chunk)
            bar.update(len(chunk))
    if task == "reply":
        return {"rouge_l": float(np.mean([rouge_l(p, r) for p, r in zip(preds, refs)])),
                "examples": len(examples)}
    return {"exact_match": exact_match(preds, refs), "examples": len(examples)}


# --- inference cost ------------------------------------------------------------------------------

def inference_flops(config, arch: str, prompt_len: int, new_tokens: int) -> dict:
    """FLOPs of one request at batch 1 that generates `new_tokens` tokens, split as the
    latency is measured (inference_latency):

      prompt       everything up to the first new token: the decoder-only prefill (its
                   last position's logits give the first token), or the encoder pass plus
                   the first decoder step from BOS
      per token    the mean cost of each of the other new_tokens - 1 decoding steps
      total        prompt + (new_tokens - 1) * per token
    """
    from ..models.flops import encode_flops, prefill_flops, token_flops
    if arch == "encdec":
        prompt = encode_flops(config, prompt_len) + token_flops(config, 0, prompt_len)
        steps = [token_flops(config, i, prompt_len) for i in range(1, new_tokens)]
    else:
        prompt = prefill_flops(config, prompt_len)
        steps = [token_flops(config, prompt_len + i) for i in range(new_tokens - 1)]
    total = float(prompt + sum(steps))
    per_token = float(np.mean(steps)) if steps else 0.0
    return {"prompt_gflops": prompt / 1e9, "total_gflops": total / 1e9,
            "gflops_per_generated_token": per_token / 1e9}


def inference_latency(model, prompt: np.ndarray, new_tokens: int, repeats: int = 3) -> dict:
    """Measured greedy generation time at batch 1, forced to `new_tokens` tokens, best of
    `repeats` (the least disturbed run, as the bench reports): the whole request, the
    prompt (a 1-token request: up to the first new token) and per generated token after
    it ((whole - prompt) / (new_tokens - 1)). The per-token time is a difference of two
    timings: None when a busy machine makes it not positive (never a negative time)."""
    from ..models.generate import generate
    p = [[int(t) for t in prompt]]

    def timed(n):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate(model, p, max_new_tokens=n, stop_at_eos=False)
            ts.append(time.perf_counter() - t0)
        return float(np.min(ts))

    timed(2)  # warm-up (kernel compilation, caches)
    whole, first = timed(new_tokens), timed(1)
    per_token = (whole - first) / max(new_tokens - 1, 1) * 1e3 if whole > first else None
    return {"total_ms": whole * 1e3, "prompt_ms": first * 1e3,
            "ms_per_generated_token": per_token}


def inference_cost(model, arch: str, prompt: np.ndarray, new_tokens: int,
                   repeats: int = 3) -> dict:
    """inference_flops and inference_latency for one prompt, same forced length."""
    out = {"prompt_tokens": int(len(prompt)), "generated_tokens": int(new_tokens)}
    out.update(inference_flops(model.config, arch, len(prompt), new_tokens))
    out.update(inference_latency(model, prompt, new_tokens, repeats))
    return out


def typical_prompt(data: TaskData) -> np.ndarray:
    """The validation reply input closest to the median length (the cost rows' prompt)."""
    lens = np.array([len(e.inputs) for e in data.reply_val])
    return data.reply_val[int(np.argmin(np.abs(lens - np.median(lens))))].inputs
