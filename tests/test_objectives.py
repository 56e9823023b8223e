"""Objectives: span corruption rules, length helper, UL2 mixture, PrefixLM, causal LM."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.objectives import (T5GEMMA2, UL2_PAPER, Denoiser, UL2Mixture, causal_lm,
                                    composition_first_part_pmf, denoise, fitting_raw_length,
                                    max_spans, noise_counts, noise_mask, pack_documents,
                                    prefix_lm, random_composition, sequential_denoise,
                                    sequential_prefix_bounds, span_corruption,
                                    span_corruption_lengths, teacher_positions, ul2_example,
                                    ul2_preset, uncorrupt)

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


@given(lengths, densities, means)
def test_noise_counts_follow_the_float32_half_even_rules(length, density, mean):
    n_noise, n_spans = noise_counts(length, density, mean)
    exact = float(np.float32(length) * np.float32(density))  # the float32 product
    want = int(np.round(exact))  # np.round rounds half to even
    assert n_noise == min(max(want, 1), length - 1)
    assert n_spans == max(1, int(np.round(float(np.float32(n_noise) / np.float32(mean)))))


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


@given(lengths, densities, means, seeds)
def test_span_corruption_reconstructs_and_orders_sentinels(length, density, mean, seed):
    if not _feasible(length, density, mean):
        return
    tokens = np.random.default_rng(seed).integers(20, 4000, size=length)
    ex = span_corruption(tokens, np.random.default_rng(seed), density=density, mean_span=mean,
                         sentinel_ids=SENTINELS, eos_id=EOS)
    n_noise, n_spans = noise_counts(length, density, mean)
    sent_in = ex.inputs[np.isin(ex.inputs, SENTINELS)]
    sent_out = ex.targets[np.isin(ex.targets, SENTINELS)]
    np.testing.assert_array_equal(sent_in, SENTINELS[:n_spans])   # <s0> <s1> ... in order
    np.testing.assert_array_equal(sent_out, SENTINELS[:n_spans])
    assert ex.targets[0] == SENTINELS[0]                 # targets start with <s0>
    assert ex.inputs[-2] == SENTINELS[n_spans - 1]       # inputs end with a sentinel, EOS
    assert ex.inputs[-1] == EOS and ex.targets[-1] == EOS
    assert len(ex.inputs) == length - n_noise + n_spans + 1
    assert len(ex.targets) == n_noise + n_spans + 1
    np.testing.assert_array_equal(uncorrupt(ex.inputs, ex.targets, SENTINELS, EOS), tokens)


def test_span_corruption_is_deterministic_for_a_seed():
    tokens = np.arange(100, 300)
    a, b, c = (span_corruption(tokens, np.random.default_rng(s), density=0.3, mean_span=3,
                               sentinel_ids=SENTINELS, eos_id=EOS) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)


def test_more_spans_than_sentinels_raises():
    tokens = np.arange(100, 200)  # density .5, mean 1 -> 50 spans
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption(tokens, np.random.default_rng(0), density=0.5, mean_span=1,
                        sentinel_ids=SENTINELS[:49], eos_id=EOS)


@pytest.mark.parametrize("args, want", [((64, 0.2, 2), (70, 22)), ((64, 0.2, 1), (63, 27)),
                                        ((512, 0.15, 3), (568, 114))])
def test_length_helper_reproduces_t5_values(args, want):
    assert span_corruption_lengths(*args) == want


@given(st.integers(8, 600), densities, means)
def test_length_helper_is_the_largest_fitting_length(inputs_length, density, mean):
    raw, targets = span_corruption_lengths(inputs_length, density, mean)
    n_noise, n_spans = noise_counts(raw, density, mean)
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


@pytest.mark.parametrize("n, s", [(12, 3), (20, 5), (9, 1)])
def test_span_length_matches_uniform_composition_formula(n, s):
    rng = np.random.default_rng(0)
    draws = 6000
    first = np.array([random_composition(n, s, rng)[0] for _ in range(draws)])
    pmf = composition_first_part_pmf(n, s)
    assert abs(pmf.sum() - 1) < 1e-12
    freq = np.bincount(first, minlength=n + 1) / draws
    # within 5 standard errors for every length k
    se = np.sqrt(pmf * (1 - pmf) / draws)
    assert np.all(np.abs(freq - pmf) <= 5 * se + 1e-9), (freq, pmf)


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


@given(st.integers(2, 300), seeds)
def test_sequential_denoiser_targets_are_a_suffix(length, seed):
    tokens = np.random.default_rng(seed).integers(20, 4000, size=length)
    ex = sequential_denoise(tokens, np.random.default_rng(seed))
    lo, hi = sequential_prefix_bounds(length, 0.25)
    assert lo == min(max(1, round(0.5 * (length - 1))), length - 1) and hi == length - 1
    assert lo <= len(ex.inputs) <= hi
    np.testing.assert_array_equal(ex.targets, tokens[len(ex.inputs):])
    np.testing.assert_array_equal(ex.inputs, tokens[:len(ex.inputs)])
    full = denoise(tokens, np.random.default_rng(seed), Denoiser("[S2S]", kind="sequential"),
                   mode_id=12, sentinel_ids=SENTINELS, eos_id=EOS)
    assert full.inputs[0] == 12 and not np.isin(full.targets, SENTINELS).any()
    # like the R and X denoisers (and T5), inputs and targets both end with EOS
    np.testing.assert_array_equal(full.inputs, np.concatenate([[12], ex.inputs, [EOS]]))
    np.testing.assert_array_equal(full.targets, np.concatenate([ex.targets, [EOS]]))


def test_single_span_denoiser_covers_three_quarters():
    d = T5GEMMA2[-1]
    ex = denoise(np.arange(100, 180), np.random.default_rng(0), d, mode_id=12,
                 sentinel_ids=SENTINELS, eos_id=EOS)
    # 80 tokens at rate .75 -> 60 noise tokens in one span: inputs [S2S] K1 <s0> EOS
    assert len(ex.targets) == 60 + 2 and len(ex.inputs) == 1 + 20 + 2
    np.testing.assert_array_equal(ex.targets[1:-1], np.arange(120, 180))


@given(st.integers(1, 200), seeds)
def test_prefix_lm_halves_and_teacher_positions(n, seed):
    tokens = np.random.default_rng(seed).integers(0, 8192, size=2 * n)
    ex = prefix_lm(tokens)
    np.testing.assert_array_equal(ex.inputs, tokens[:n])
    np.testing.assert_array_equal(ex.targets, tokens[n:])
    pos = teacher_positions(n, n)
    # the teacher predicts target j = tokens[n + j] from its logits at n + j - 1
    np.testing.assert_array_equal(tokens[pos + 1], ex.targets)


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
