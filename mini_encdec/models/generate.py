"""Text generation for both models: greedy, seeded sampling, beam search, with a KV cache.

    tokens = generate(model, inputs, max_new_tokens=20, method="greedy" | "sample" | "beam",
                      temperature=1.0, top_k=None, top_p=None, rng=None, seed=0,
                      num_beams=4, length_penalty=1.0, use_cache=True, attention_mask=None)
    tokens, scores = beam_search(model, inputs, num_beams=4, ...)

inputs: a list of 1-D token-id sequences (lengths may differ), or a (B, L) integer array
with an optional attention_mask (B, L) (1 = real token; any padding side).
  - GemmaLM: the prompts; the model continues them. Prompts are LEFT-padded internally
    so every row's next token sits in the same column; positions count real tokens only,
    so a padded prompt generates exactly what it generates alone.
  - EncDecLM: the sources; they are RIGHT-padded and encoded once (the encoder is
    bidirectional, padding keys are masked). The decoder starts from BOS.
Returns the new tokens only, (B, N) with N <= max_new_tokens: each row stops at its first
EOS (included); positions after it hold the pad id. N is the longest row.

Methods:
  greedy   argmax of the logits at each step.
  sample   softmax(logits / temperature), restricted to the top_k most likely tokens and
           then to the smallest set whose probability reaches top_p (nucleus), sampled with
           `rng` (an np.random.Generator; default np.random.default_rng(seed)).
  beam     beam search over num_beams beams per input; a finished hypothesis scores
           sum(log p) / length ** length_penalty (length = its number of new tokens,
           EOS included). A row stops once no live beam can still beat its worst kept
           hypothesis (an exact bound, not a heuristic); rows unfinished at max_new_tokens
           take their live beams as hypotheses.

use_cache=True keeps the decoder's keys/values (decoding.py); use_cache=False recomputes
the full forward over the whole sequence at each step. The two give the same tokens.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import ops
from .gemma import GemmaLM
from .decoding import decoder_parts, decoder_step, init_planned_cache, step_weight_bytes
from ..validate import check_ids, check_mask, check_positive, check_positive_int

METHODS = ("greedy", "sample", "beam")


# --- inputs ------------------------------------------------------------------------------------

def as_sequences(inputs, attention_mask, vocab_size: int, fn: str) -> list:
    """A list of 1-D int64 arrays of the real tokens of every input."""
    if isinstance(inputs, np.ndarray):
        check_ids(inputs, "inputs", vocab_size, ndim=2, fn=fn)
        if attention_mask is None:
            return [row.astype(np.int64) for row in inputs]
        mask = check_mask(attention_mask, "attention_mask", inputs.shape, fn=fn)
        return [row[m].astype(np.int64) for row, m in zip(inputs, mask)]
    if attention_mask is not None:
        raise ValueError(f"{fn}: argument 'attention_mask': only allowed with an array of inputs")
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError(f"{fn}: argument 'inputs': expected a non-empty list of token-id "
                         f"sequences or a (B, L) array, got {type(inputs).__name__}")
    seqs = []
    for i, s in enumerate(inputs):
        a = np.asarray(s)
        if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{fn}: argument 'inputs[{i}]': expected a 1-D sequence of "
                             f"integer ids, got shape {a.shape} dtype {a.dtype}")
        check_ids(a.astype(np.int64), f"inputs[{i}]", vocab_size, fn=fn)
        seqs.append(a.astype(np.int64))
    return seqs


def pad_sequences(seqs: Sequence[np.ndarray], pad_id: int, side: str):
    """ids (B, L) and mask (B, L) bool of sequences padded on `side` ("left"/"right")."""
    L = max(len(s) for s in seqs)
    ids = np.full((len(seqs), L), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), L), dtype=bool)
    for b, s in enumerate(seqs):
        cols = slice(L - len(s), L) if side == "left" else slice(0, len(s))
        ids[b, cols] = s
        mask[b, cols] = True
    return ids, mask


# --- steppers: "logits of the next token", with or without the cache ----------------------------

class _CachedStepper:
    """Next-token logits from the KV cache: one decoder step per new token."""

    def __init__(self, model, ids, mask, enc=None, enc_mask=None, max_new_tokens=None):
        self.model = model
        # planned for the prompt and max_new_tokens new tokens (decoding.DecodingPlan)
        max_len = ids.shape[1] + (max_new_tokens or 1)
        self.cache = init_planned_cache(model, ids.shape[0], enc, enc_mask, max_len=max_len)
        self.weight_bytes = step_weight_bytes(model)
        self.first_ids, self.first_mask = ids, mask

    def first(self) -> np.ndarray:
        """Prefill with the prompt (decoder-only) or BOS (encoder-decoder): (B, V)."""
        return decoder_step(self.model, self.cache, self.first_ids, self.first_mask,
                            last_only=True)[:, -1]

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        # (B, 1) -> (B, 1, V) -> (B, V); tokens come from the model's own vocabulary.
        with self.step_threads(len(tokens)):
            return decoder_step(self.model, self.cache, tokens[:, None], last_only=True)[:, -1]

    def step_threads(self, rows: int):
        """The thread setting of a one-token step of `rows` rows: a few rows of a model
        whose weights stay in the cache are too little work to split over threads
        (ops.serial); a bigger step uses the threads the load leaves free."""
        return ops.serial(rows=rows, weight_bytes=self.weight_bytes)

    def reorder(self, rows: np.ndarray) -> None:
        self.cache.reorder(rows)


class _FullStepper:
    """Next-token logits by re-running the full forward over the whole sequence."""

    def __init__(self, model, ids, mask, enc=None, enc_mask=None, max_new_tokens=None):
        self.model, self.ids, self.mask = model, ids, mask
        self.enc, self.enc_mask = enc, enc_mask

    def _logits(self) -> np.ndarray:
        if isinstance(self.model, GemmaLM):
            out = self.model.forward({"input_ids": self.ids,
                                      "attention_mask": self.mask.astype(np.int64)})
        else:
            out = self.model.decode(self.ids, self.enc, self.enc_mask)
        return out[:, -1]  # (B, T, V) -> (B, V)

    def first(self) -> np.ndarray:
        return self._logits()

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        self.ids = np.concatenate([self.ids, tokens[:, None]], axis=1)  # (B, T + 1)
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), bool)], axis=1)
        return self._logits()

    def reorder(self, rows: np.ndarray) -> None:
        self.ids, self.mask = self.ids[rows], self.mask[rows]
        if self.enc is not None:
            self.enc = self.enc[rows]
            self.enc_mask = None if self.enc_mask is None else self.enc_mask[rows]


def make_stepper(model, seqs, use_cache: bool, max_new_tokens: Optional[int] = None):
    """A stepper for the sequences seqs (prompts, or encoder inputs); max_new_tokens, when
    known, sizes the cached stepper's plan and buffers (more still works, a bit slower)."""
    cfg = decoder_parts(model)[0].cfg
    make = _CachedStepper if use_cache else _FullStepper
    if isinstance(model, GemmaLM):
        if any(len(s) == 0 for s in seqs):
            raise ValueError("generate: argument 'inputs': every prompt needs at least one "
                             "token (e.g. BOS) for a decoder-only model")
        ids, mask = pad_sequences(seqs, cfg.pad_token_id, "left")
        return make(model, ids, mask, max_new_tokens=max_new_tokens)
    src, src_mask = pad_sequences(seqs, cfg.pad_token_id, "right")
    enc = model.encode(src, src_mask.astype(np.int64))  # (B, S, De), once per request
    bos = np.full((len(seqs), 1), cfg.bos_token_id, dtype=np.int64)
    return make(model, bos, np.ones_like(bos, dtype=bool), enc, src_mask, max_new_tokens)


# --- token choice -------------------------------------------------------------------------------

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sampling_probs(logits: np.ndarray, temperature: float = 1.0, top_k: Optional[int] = None,
                   top_p: Optional[float] = None) -> np.ndarray:
    """The distribution sampling draws from, (B, V) float64, rows summing to 1."""
    z = logits.astype(np.float64) / temperature  # (B, V)
    V = z.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(z, V - top_k, axis=-1)[:, V - top_k:V - top_k + 1]  # (B, 1)
        z = np.where(z >= kth, z, -np.inf)  # ties at the k-th value are all kept
    p = np.exp(log_softmax(z))
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")  # (B, V) most likely first
        ps = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(ps, axis=-1) - ps  # probability of the strictly likelier tokens
        keep_sorted = before < top_p  # the smallest prefix reaching top_p (>= 1 token)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p = p / p.sum(axis=-1, keepdims=True)
    return p


def sample_tokens(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of p (B, V) by inverting the CDF with uniforms from rng."""
    cdf = np.cumsum(p, axis=-1)  # (B, V)
    u = rng.random(p.shape[0]) * cdf[:, -1]  # (B,)
    tok = (cdf <= u[:, None]).sum(axis=-1)
    tok = np.minimum(tok, p.shape[-1] - 1)
    # never land on a zero-probability token through rounding at the top end
    bad = p[np.arange(len(tok)), tok] == 0
    if bad.any():
        tok[bad] = np.argmax(p[bad], axis=-1)
    return tok


# --- the searches -------------------------------------------------------------------------------

def _check_common(model, max_new_tokens, fn):
    decoder_parts(model)  # validates the model type
    return check_positive_int(max_new_tokens, "max_new_tokens", fn=fn)


def generate(model, inputs, *, max_new_tokens: int = 20, method: str = "greedy",
             temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, rng: Optional[np.random.Generator] = None,
             seed: int = 0, num_beams: int = 4, length_penalty: float = 1.0,
             use_cache: bool = True, attention_mask=None,
             stop_at_eos: bool = True) -> np.ndarray:
    """New tokens (B, N) for every input (see the module docstring).

    stop_at_eos=False generates exactly max_new_tokens for every row, EOS or not (a
    forced length: what inference-cost comparisons at equal output length need)."""
    fn = "generate"
    max_new_tokens = _check_common(model, max_new_tokens, fn)
    if method not in METHODS:
        raise ValueError(f"{fn}: argument 'method': expected one of {METHODS}, got {method!r}")
    if not isinstance(stop_at_eos, bool):
        raise ValueError(f"{fn}: argument 'stop_at_eos': expected True or False, got "
                         f"{stop_at_eos!r}")
    if method == "beam":
        if not stop_at_eos:
            raise ValueError(f"{fn}: argument 'stop_at_eos': beam search always stops at EOS")
        return beam_search(model, inputs, num_beams=num_beams, max_new_tokens=max_new_tokens,
                           length_penalty=length_penalty, use_cache=use_cache,
                           attention_mask=attention_mask)[0]
    temperature = check_positive(temperature, "temperature", fn=fn)
    if top_k is not None:
        top_k = check_positive_int(top_k, "top_k", fn=fn)
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"{fn}: argument 'top_p': expected a number in (0, 1], got {top_p!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: argument 'rng': expected an np.random.Generator, got "
                         f"{type(rng).__name__}")
    if method == "sample" and rng is None:
        rng = np.random.default_rng(seed)
    cfg = decoder_parts(model)[0].cfg
    seqs = as_sequences(inputs, attention_mask, cfg.vocab_size, fn)
    stepper = make_stepper(model, seqs, use_cache, max_new_tokens)
    B = len(seqs)
    finished = np.zeros(B, dtype=bool)
    out = []
    logits = stepper.first()  # (B, V)
    for t in range(max_new_tokens):
        if method == "greedy":
            tok = np.argmax(logits, axis=-1)
        else:
            tok = sample_tokens(sampling_probs(logits, temperature, top_k, top_p), rng)
        tok = np.where(finished, cfg.pad_token_id, tok).astype(np.int64)  # (B,)
        out.append(tok)
        if stop_at_eos:
            finished |= tok == cfg.eos_token_id
        if finished.all() or t == max_new_tokens - 1:
            break
        logits = stepper.advance(tok)
    return np.stack(out, axis=1)  # (B, N)


def beam_search(model, inputs, *, num_beams: int = 4, max_new_tokens: int = 20,
                length_penalty: float = 1.0, use_cache: bool = True, attention_mask=None):
    """Length-normalised beam search. Returns (tokens (B, N), scores (B,)) where scores are
    the normalised log-probabilities sum(log p) / length ** length_penalty of the best
    hypotheses."""
    fn = "beam_search"
    max_new_tokens = _check_common(model, max_new_tokens, fn)
    nb = check_positive_int(num_beams, "num_beams", fn=fn)
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"{fn}: argument 'length_penalty': expected a number, got "
                         f"{length_penalty!r}")
    cfg = decoder_parts(model)[0].cfg
    eos, pad = cfg.eos_token_id, cfg.pad_token_id
    seqs = as_sequences(inputs, attention_mask, cfg.vocab_size, fn)
    B = len(seqs)
    stepper = make_stepper(model, seqs, use_cache, max_new_tokens)
    logp = log_softmax(stepper.first())  # (B, V)
    V = logp.shape[-1]
    stepper.reorder(np.repeat(np.arange(B), nb))  # every input -> nb identical beams
    logp = np.repeat(logp, nb, axis=0)  # (B*nb, V)
    scores = np.full((B, nb), -np.inf)
    scores[:, 0] = 0.0  # identical beams: only the first one may expand at step 0
    history = np.zeros((B, nb, 0), dtype=np.int64)  # tokens of the live beams
    hyps: list = [[] for _ in range(B)]  # per input: (normalised score, tokens)
    done = np.zeros(B, dtype=bool)

    def norm(score, length):
        return score / (length ** length_penalty)

    def bound(best_live: float, length: int) -> float:
        """The best normalised score any continuation of a live beam can still reach:
        scores only fall as tokens are added, so with length_penalty > 0 the longest
        allowed length gives the bound (the division shrinks a negative score)."""
        if length_penalty > 0 and best_live < 0:
            return norm(best_live, max_new_tokens)
        return norm(best_live, length)

    for t in range(max_new_tokens):
        length = t + 1  # tokens of a hypothesis that ends at this step
        cand = (scores[:, :, None] + logp.reshape(B, nb, V)).reshape(B, nb * V)  # (B, nb*V)
        top = np.argsort(-cand, axis=-1, kind="stable")[:, :2 * nb]  # (B, 2nb)
        rows = np.zeros((B, nb), dtype=np.int64)  # which live beam each new beam extends
        toks = np.full((B, nb), pad, dtype=np.int64)
        new_scores = np.full((B, nb), -np.inf)
        for b in range(B):
            if done[b]:
                continue
            n_live = 0
            for rank, c in enumerate(top[b]):
                s = cand[b, c]
                if not np.isfinite(s):
                    break
                beam, tok = divmod(int(c), V)
                if tok == eos or length == max_new_tokens:
                    if rank < nb:  # only hypotheses among the nb best candidates count
                        seq = np.append(history[b, beam], tok)
                        hyps[b].append((norm(s, length), seq))
                        hyps[b].sort(key=lambda h: -h[0])
                        del hyps[b][nb:]
                    continue
                rows[b, n_live], toks[b, n_live], new_scores[b, n_live] = beam, tok, s
                n_live += 1
                if n_live == nb:
                    break
            if len(hyps[b]) == nb and (n_live == 0 or
                                        bound(new_scores[b, 0], length) <= hyps[b][-1][0]):
                done[b] = True
            elif n_live == 0:
                done[b] = True
        if done.all() or t == max_new_tokens - 1:
            break
        flat_rows = (np.arange(B)[:, None] * nb + rows).reshape(-1)  # (B*nb,)
        history = np.concatenate([history[np.arange(B)[:, None], rows], toks[:, :, None]],
                                 axis=2)  # (B, nb, t + 1)
        scores = new_scores
        stepper.reorder(flat_rows)
        logp = log_softmax(stepper.advance(toks.reshape(-1)))  # (B*nb, V)

    best = [max(h, key=lambda x: x[0]) for h in hyps]
    N = max(len(s) for _, s in best)
    tokens = np.full((B, N), pad, dtype=np.int64)
    for b, (_, s) in enumerate(best):
        tokens[b, :len(s)] = s
    return tokens, np.array([s for s, _ in best])
