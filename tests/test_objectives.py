"""Objectives: span corruption rules, length helper, UL2 mixture, PrefixLM, causal LM.

Markers task3_1 ... task3_4: the classroom assignments (tutorials/assignments/README.md);
a test carries the task of the function it grades.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.objectives.causal_lm import causal_lm, pack_documents
from mini_encdec.objectives.example import teacher_positions
from mini_encdec.objectives.prefix_lm import prefix_lm
from mini_encdec.objectives.span_corruption import (composition_first_part_pmf, corrupted_lengths,
                                                    fitting_raw_length, max_spans, noise_counts,
                                                    noise_mask, random_composition,
                                                    span_corruption, span_corruption_lengths,
                                                    uncorrupt)
from mini_encdec.objectives.ul2 import (T5GEMMA2, UL2_PAPER, Denoiser, UL2Mixture, denoise,
                                        sequential_denoise, sequential_prefix_bounds,
                                        ul2_example, ul2_preset)

SENTINELS = np.arange(5000, 5256)   # stand-in sentinel ids, disjoint from the text ids
EOS = 1
MODES = {"[NLU]": 10, "[NLG]": 11, "[S2S]": 12}

lengths = st.integers(2, 400)
densities = st.sampled_from([0.05, 0.15, 0.2, 0.3, 0.5, 0.75, 0.9])
means = st.sampled_from([1.0, 2.0, 3.0, 8.0, 12.0, 64.0, math.inf])
seeds = st.integers(0, 2**32 - 1)


def _feasible(length, density, mean):
    n_noise, n_spans = noise_counts(length, density, mean)
    return n_spans <= length - n_noise


@pytest.mark.task3_1
@given(lengths, densities, means)
def test_noise_counts_follow_the_float32_half_even_rules(length, density, mean):
    n_noise, n_spans = noise_counts(length, density, mean)
    exact = float(np.float32(length) * np.float32(density))  # the float32 product
    want = int(np.round(exact))  # np.round rounds half to even
    assert n_noise == min(max(want, 1), length - 1)
    assert n_spans == max(1, int(np.round(float(np.float32(n_noise) / np.float32(mean)))))


@pytest.mark.task3_1
def test_noise_counts_round_half_to_even():
    # 10 * 0.25 = 2.5 exactly in float32 -> 2 (even); 14 * 0.25 = 3.5 -> 4
    assert noise_counts(10, 0.25, 1.0)[0] == 2
    assert noise_counts(14, 0.25, 1.0)[0] == 4
    # spans: 5 noise / mean 2 = 2.5 -> 2; 7 / 2 = 3.5 -> 4
    assert noise_counts(20, 0.25, 2.0) == (5, 2)
    assert noise_counts(28, 0.25, 2.0) == (7, 4)
    # float32 matters: float32(190) * float32(0.15) = 28.500002 -> 29, while the
    # float64 product 28.5 would round to 28; 110 * .55: 60.5 in float32 -> 60, not 61
    assert noise_counts(190, 0.15, 1.0)[0] == 29
    assert noise_counts(110, 0.55, 1.0)[0] == 60


@pytest.mark.task3_2
@given(lengths, densities, means, seeds)
def test_noise_mask_structure(length, density, mean, seed):
    if not _feasible(length, density, mean):
        with pytest.raises(ValueError, match="kept"):
            noise_mask(length, density, mean, np.random.default_rng(seed))
        return
    mask = noise_mask(length, density, mean, np.random.default_rng(seed))
    n_noise, n_spans = noise_counts(length, density, mean)
    assert mask.shape == (length,) and mask.dtype == bool
    assert not mask[0] and mask[-1]            # starts kept, ends with noise
    assert mask.sum() == n_noise
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert starts.sum() == n_spans             # exactly n_spans disjoint noise runs


def check_span_corruption(corrupt, tokens, density, mean, seed):
    """corrupt(tokens, rng, density=, mean_span=, sentinel_ids=, eos_id=) -> Example:
    inputs K1 <s0> K2 <s1> ... EOS and targets <s0> N1 <s1> N2 ... EOS (kept spans K,
    noise spans N), whose sentinels undo the corruption."""
    ex = corrupt(tokens, np.random.default_rng(seed), density=density, mean_span=mean,
                 sentinel_ids=SENTINELS, eos_id=EOS)
    n_noise, n_spans = noise_counts(len(tokens), density, mean)
    sent_in = ex.inputs[np.isin(ex.inputs, SENTINELS)]
    sent_out = ex.targets[np.isin(ex.targets, SENTINELS)]
    np.testing.assert_array_equal(sent_in, SENTINELS[:n_spans])   # <s0> <s1> ... in order
    np.testing.assert_array_equal(sent_out, SENTINELS[:n_spans])
    assert ex.targets[0] == SENTINELS[0]                 # targets start with <s0>
    assert ex.inputs[-2] == SENTINELS[n_spans - 1]       # inputs end with a sentinel, EOS
    assert ex.inputs[-1] == EOS and ex.targets[-1] == EOS
    assert len(ex.inputs) == len(tokens) - n_noise + n_spans + 1
    assert len(ex.targets) == n_noise + n_spans + 1
    np.testing.assert_array_equal(uncorrupt(ex.inputs, ex.targets, SENTINELS, EOS), tokens)


@pytest.mark.task3_3
@given(lengths, densities, means, seeds)
def test_span_corruption_reconstructs_and_orders_sentinels(length, density, mean, seed):
    if not _feasible(length, density, mean):
        return
    tokens = np.random.default_rng(seed).integers(20, 4000, size=length)
    check_span_corruption(span_corruption, tokens, density, mean, seed)


@pytest.mark.task3_3
def test_check_rejects_ordinary_ids_as_sentinels():
    tokens = np.arange(10, 60)

    def reuses_ids(tokens, rng, *, sentinel_ids, **kw):  # "sentinels" from the vocabulary
        return span_corruption(tokens, rng, sentinel_ids=np.arange(20, 320), **kw)

    check_span_corruption(span_corruption, tokens, 0.15, 3.0, 0)
    with pytest.raises(AssertionError):
        check_span_corruption(reuses_ids, tokens, 0.15, 3.0, 0)


@pytest.mark.task3_3
def test_span_corruption_is_deterministic_for_a_seed():
    tokens = np.arange(100, 300)
    a, b, c = (span_corruption(tokens, np.random.default_rng(s), density=0.3, mean_span=3,
                               sentinel_ids=SENTINELS, eos_id=EOS) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)


@pytest.mark.task3_3
def test_more_spans_than_sentinels_raises():
    tokens = np.arange(100, 200)  # density .5, mean 1 -> 50 spans
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption(tokens, np.random.default_rng(0), density=0.5, mean_span=1,
                        sentinel_ids=SENTINELS[:49], eos_id=EOS)


@pytest.mark.task3_1
@pytest.mark.parametrize("args, want", [((64, 0.2, 2), (70, 22)), ((64, 0.2, 1), (63, 27)),
                                        ((512, 0.15, 3), (568, 114))])
def test_length_helper_reproduces_t5_values(args, want):
    assert span_corruption_lengths(*args) == want


@pytest.mark.task3_1
@given(st.integers(3, 600), densities, means)
def test_length_helper_is_the_largest_fitting_length(inputs_length, density, mean):
    raw, targets = span_corruption_lengths(inputs_length, density, mean)
    n_noise, n_spans = noise_counts(raw, density, mean)
    # inputs: the kept tokens, one sentinel per span, EOS; targets: the noise, the same
    assert corrupted_lengths(raw, density, mean) == (raw - n_noise + n_spans + 1, targets)
    assert raw - n_noise + n_spans + 1 <= inputs_length
    assert targets == n_noise + n_spans + 1
    n2, s2 = noise_counts(raw + 1, density, mean)
    assert raw + 1 - n2 + s2 + 1 > inputs_length


def test_fitting_raw_length_respects_both_lengths():
    raw = fitting_raw_length(512, 64, 0.5, 3)
    n_noise, n_spans = noise_counts(raw, 0.5, 3)
    assert n_noise + n_spans + 1 <= 64
    assert noise_counts(raw + 1, 0.5, 3)[0] + noise_counts(raw + 1, 0.5, 3)[1] + 1 > 64


def test_sentinels_suffice_for_the_densest_denoiser_at_512():
    # 256 shipped sentinels cover every span corruption whose inputs fit 512 tokens
    assert max_spans(512) == 255
    for mix in (UL2_PAPER, T5GEMMA2):
        for d in mix:
            if d.kind == "span":
                raw = d.raw_length(512, 512)
                assert noise_counts(raw, d.density, d.mean_span)[1] <= 255


@pytest.mark.task3_2
@given(n=st.integers(1, 40), data=st.data(), seed=seeds)
def test_composition_is_positive_and_sums_to_n(n, data, seed):
    parts = data.draw(st.integers(1, n))
    c = random_composition(n, parts, np.random.default_rng(seed))
    assert c.shape == (parts,) and c.sum() == n and np.all(c >= 1)


@pytest.mark.task3_2
@pytest.mark.parametrize("n, parts", [(5, 3), (6, 2), (9, 1)])
def test_composition_is_uniform(n, parts):
    """Every composition of n into `parts` positive parts has probability
    1 / C(n-1, parts-1) (so the first part, a span length, follows
    composition_first_part_pmf, checked by enumeration below)."""
    draws = 3000
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(draws):
        key = tuple(random_composition(n, parts, rng))
        counts[key] = counts.get(key, 0) + 1
    total = math.comb(n - 1, parts - 1)
    assert len(counts) == total  # every composition shows up
    p = 1 / total
    sd = math.sqrt(p * (1 - p) / draws)
    assert all(abs(c / draws - p) <= 5 * sd for c in counts.values())


def test_composition_formula_by_enumeration():
    # all compositions of 7 into 3 parts: C(6, 2) = 15; the first part is k in C(7-k-1, 1)
    import itertools
    comps = [c for c in itertools.product(range(1, 8), repeat=3) if sum(c) == 7]
    counts = np.bincount([c[0] for c in comps], minlength=8) / len(comps)
    np.testing.assert_allclose(counts, composition_first_part_pmf(7, 3))


def test_ul2_task_frequencies_match_weights():
    for mix in (ul2_preset("ul2"), ul2_preset("t5gemma2"),
                ul2_preset("ul2", weights=[1, 0, 2, 0, 0, 1, 4])):
        rng = np.random.default_rng(1)
        n = 8000
        counts = np.bincount([mix.sample_task(rng) for _ in range(n)],
                             minlength=len(mix.denoisers))
        p = mix.probabilities
        se = np.sqrt(p * (1 - p) / n)
        assert np.all(np.abs(counts / n - p) <= 5 * se + 1e-12)
    assert ul2_preset("t5gemma2").probabilities.tolist() == [0.125] * 4 + [0.5]
    assert len(ul2_preset("ul2").denoisers) == 7


@pytest.mark.task3_4
@pytest.mark.parametrize("preset", ["ul2", "t5gemma2"])
def test_ul2_examples_carry_mode_tokens_and_fit(preset):
    mix = ul2_preset(preset)
    s, t = 64, 48
    window = np.arange(100, 100 + mix.window_length(s, t))
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(200):
        ex, task = ul2_example(window, rng, mix, encoder_length=s, decoder_length=t,
                               mode_ids=MODES, sentinel_ids=SENTINELS, eos_id=EOS)
        den = mix.denoisers[task]
        seen.add(task)
        assert ex.inputs[0] == MODES[den.mode]
        assert not np.isin(ex.inputs[1:], list(MODES.values())).any()
        assert len(ex.inputs) <= s and len(ex.targets) <= t
        if den.kind == "sequential":  # S: [S2S] prefix EOS -> suffix EOS, a contiguous window
            assert ex.inputs[-1] == EOS and ex.targets[-1] == EOS
            x = np.concatenate([ex.inputs[1:-1], ex.targets[:-1]])
            assert np.all(np.diff(x) == 1)
    assert seen == set(range(len(mix.denoisers)))


@pytest.mark.task3_4
@given(st.integers(2, 300), st.sampled_from([0.0, 0.25, 0.5]), seeds)
def test_sequential_denoiser_targets_are_a_suffix(length, r, seed):
    tokens = np.random.default_rng(seed).integers(20, 4000, size=length)
    ex = sequential_denoise(tokens, np.random.default_rng(seed), r=r)
    lo, hi = sequential_prefix_bounds(length, r)
    assert lo == min(max(1, round((1 - 2 * r) * (length - 1))), length - 1)
    assert hi == length - 1
    assert lo <= len(ex.inputs) <= hi
    np.testing.assert_array_equal(ex.targets, tokens[len(ex.inputs):])
    np.testing.assert_array_equal(ex.inputs, tokens[:len(ex.inputs)])
    s_denoiser = Denoiser("[S2S]", kind="sequential", r=r)
    full = denoise(tokens, np.random.default_rng(seed), s_denoiser, mode_id=12,
                   sentinel_ids=SENTINELS, eos_id=EOS)
    assert full.inputs[0] == 12 and not np.isin(full.targets, SENTINELS).any()
    # like the R and X denoisers (and T5), inputs and targets both end with EOS
    np.testing.assert_array_equal(full.inputs, np.concatenate([[12], ex.inputs, [EOS]]))
    np.testing.assert_array_equal(full.targets, np.concatenate([ex.targets, [EOS]]))


@pytest.mark.task3_4
def test_sequential_prefix_length_is_uniform():
    L, r = 21, 0.25
    lo, hi = sequential_prefix_bounds(L, r)  # [10, 20]
    rng = np.random.default_rng(0)
    k = [len(sequential_denoise(np.arange(L), rng, r=r).inputs) for _ in range(2200)]
    freq = np.bincount(k, minlength=hi + 1)[lo:] / len(k)
    assert (lo, hi) == (10, 20) and np.all(np.abs(freq - 1 / 11) < 0.03)


@pytest.mark.task3_4
def test_single_span_denoiser_covers_three_quarters():
    d = T5GEMMA2[-1]
    ex = denoise(np.arange(100, 180), np.random.default_rng(0), d, mode_id=12,
                 sentinel_ids=SENTINELS, eos_id=EOS)
    # 80 tokens at rate .75 -> 60 noise tokens in one span: inputs [S2S] K1 <s0> EOS
    assert len(ex.targets) == 60 + 2 and len(ex.inputs) == 1 + 20 + 2
    np.testing.assert_array_equal(ex.targets[1:-1], np.arange(120, 180))


@pytest.mark.task3_4
@given(st.integers(1, 200), seeds)
def test_prefix_lm_halves_and_teacher_positions(n, seed):
    tokens = np.random.default_rng(seed).integers(0, 8192, size=2 * n)
    ex = prefix_lm(tokens)
    np.testing.assert_array_equal(ex.inputs, tokens[:n])
    np.testing.assert_array_equal(ex.targets, tokens[n:])
    pos = teacher_positions(n, n)
    # the teacher predicts target j = tokens[n + j] from its logits at n + j - 1
    np.testing.assert_array_equal(tokens[pos + 1], ex.targets)


@pytest.mark.task3_4
def test_prefix_lm_rejects_odd_lengths():
    with pytest.raises(ValueError, match="even"):
        prefix_lm(np.arange(5))


def test_causal_lm_and_packing():
    stream = pack_documents([np.array([5, 6]), np.array([7])], eos_id=EOS)
    np.testing.assert_array_equal(stream, [5, 6, 1, 7, 1])
    ex = causal_lm(stream)
    np.testing.assert_array_equal(np.concatenate([ex.inputs, ex.targets]), stream)
    assert len(ex.inputs) == 1


def test_bad_inputs_raise_value_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="density"):
        noise_counts(10, 1.5, 3)
    with pytest.raises(ValueError, match="mean_span"):
        noise_counts(10, 0.5, 0.5)
    with pytest.raises(ValueError, match="rng"):
        span_corruption(np.arange(10), 0, density=0.2, mean_span=2, sentinel_ids=SENTINELS,
                        eos_id=EOS)
    with pytest.raises(ValueError, match="1-D"):
        span_corruption(np.ones((2, 3), int), rng, density=0.2, mean_span=2,
                        sentinel_ids=SENTINELS, eos_id=EOS)
    with pytest.raises(ValueError, match="weights"):
        UL2Mixture(UL2_PAPER, (1.0,))
    with pytest.raises(ValueError, match="mode"):
        Denoiser("[XYZ]")
