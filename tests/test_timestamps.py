"""Timestamp-training windows (whisper_finetune.data.timestamps): packing, labels token by token, the ratio.

The tiny tokenizers of conftest carry Whisper's special and timestamp tokens but no BPE merges, so
text is one token per byte: `` hi`` is ``['Ġ', 'h', 'i']``.
"""
import os

import pytest
from transformers import WhisperTokenizer, WhisperTokenizerFast

from whisper_finetune.errors import UserError
from whisper_finetune.data.features import MAX_LABEL_TOKENS
from whisper_finetune.data.timestamps import (TIME_PRECISION, TIMESTAMP_TOKENS, WINDOW_SECONDS, PackResult, Segment,
                                              Window, keeps_timestamps, pack_windows, plan_windows, single_segment_labels,
                                              timestamp_index, timestamp_labels, timestamp_token_id, within_label_limit)

PREFIX = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>"]
S = Segment

# A 70 s recording: C is followed by D, which starts in the first window but ends after it (cut);
# L (31 s) fits no window and is dropped, after cutting the second window.
RECORDING_70S = [S(0.0, 4.0, "a"), S(5.0, 12.5, "b"), S(13.0, 28.0, "c"), S(28.4, 33.0, "d"), S(34.0, 36.0, "e"),
                 S(36.5, 67.5, "long"), S(68.0, 69.5, "f")]
WINDOWS_70S = (Window("rec", 0.0, 30.0, (S(0.0, 4.0, "a"), S(5.0, 12.5, "b"), S(13.0, 28.0, "c")), 28.4),
               Window("rec", 28.4, 28.4 + 30.0, (S(28.4, 33.0, "d"), S(34.0, 36.0, "e")), 36.5),
               Window("rec", 68.0, 70.0, (S(68.0, 69.5, "f"),), None))


@pytest.fixture(scope="module", params=["slow", "fast"])
def tokenizer(request, tiny_model_dir):
    """The multilingual tiny tokenizer, both classes: WhisperProcessor hands out the fast one."""
    cls = WhisperTokenizer if request.param == "slow" else WhisperTokenizerFast
    return cls.from_pretrained(tiny_model_dir)


def prefix_ids(tokenizer, tokens=PREFIX):
    return tokenizer.convert_tokens_to_ids(tokens)


def test_constants_follow_whisper():
    assert TIME_PRECISION == 0.02
    assert WINDOW_SECONDS == 30.0
    assert TIMESTAMP_TOKENS == 1501


@pytest.mark.parametrize("segments, duration, windows, dropped", [
    pytest.param(RECORDING_70S, 70.0, WINDOWS_70S, 1, id="70s-cut-and-dropped"),
    pytest.param(list(reversed(RECORDING_70S)), 70.0, WINDOWS_70S, 1, id="70s-unsorted-input"),
    pytest.param([S(0.0, 2.0, "a"), S(40.0, 45.0, "b")], 50.0,
                 (Window("rec", 0.0, 30.0, (S(0.0, 2.0, "a"),), None),
                  Window("rec", 40.0, 50.0, (S(40.0, 45.0, "b"),), None)), 0, id="next-starts-after-window-end"),
    pytest.param([S(0.0, 10.0, "a"), S(10.0, 30.0, "b"), S(30.0, 31.0, "c")], 40.0,
                 (Window("rec", 0.0, 30.0, (S(0.0, 10.0, "a"), S(10.0, 30.0, "b")), None),
                  Window("rec", 30.0, 40.0, (S(30.0, 31.0, "c"),), None)), 0, id="ends-exactly-at-window-end"),
    pytest.param([S(10.0, 40.0, "a")], 45.0, (Window("rec", 10.0, 40.0, (S(10.0, 40.0, "a"),), None),), 0,
                 id="exactly-30s-fits"),
    pytest.param([S(10.0, 40.02, "a")], 45.0, (), 1, id="30.02s-dropped"),
    # 4.52 + 30.0 == 34.519999999999996 in floats: the segment still ends within its window.
    pytest.param([S(4.52, 34.52, "a")], 40.0, (Window("rec", 4.52, 4.52 + 30.0, (S(4.52, 34.52, "a"),), None),),
                 0, id="float-noise-at-window-end"),
    pytest.param([S(1.0, 3.0, "a"), S(4.0, 9.0, "b")], 12.0,
                 (Window("rec", 1.0, 12.0, (S(1.0, 3.0, "a"), S(4.0, 9.0, "b")), None),), 0,
                 id="window-ends-with-recording"),
    pytest.param([], 12.0, (), 0, id="no-segments"),
])
def test_pack_windows(segments, duration, windows, dropped):
    assert pack_windows("rec", segments, duration) == PackResult(windows, dropped)


@pytest.mark.parametrize("segments, duration, message", [
    ([S(-0.5, 1.0, "a")], 10.0, "must have 0 <= start"),
    ([S(2.0, 1.0, "a")], 10.0, "must have 0 <= start"),
    ([S(8.0, 10.5, "a")], 10.0, "duration"),
    ([S(0.0, 3.0, "a"), S(2.5, 4.0, "b")], 10.0, "overlap"),
])
def test_pack_windows_rejects_bad_segments(segments, duration, message):
    with pytest.raises(UserError, match=message):
        pack_windows("rec", segments, duration)


def test_window_keys_are_distinct_and_name_the_recording():
    keys = [w.key for w in pack_windows("talk7", RECORDING_70S, 70.0).windows]
    assert keys == ["talk7@0.000", "talk7@28.400", "talk7@68.000"]


@pytest.mark.parametrize("window, tokens", [
    pytest.param(WINDOWS_70S[0], ["<|0.00|>", "Ġ", "a", "<|4.00|>", "<|5.00|>", "Ġ", "b", "<|12.50|>",
                                  "<|13.00|>", "Ġ", "c", "<|28.00|>", "<|28.40|>"], id="first-window-cut"),
    # Relative to the window's start 28.4: 33.0 -> 4.60, 34.0 -> 5.60, 36.0 -> 7.60, cut at 36.5 -> 8.10.
    pytest.param(WINDOWS_70S[1], ["<|0.00|>", "Ġ", "d", "<|4.60|>", "<|5.60|>", "Ġ", "e", "<|7.60|>", "<|8.10|>"],
                 id="second-window-relative"),
    pytest.param(WINDOWS_70S[2], ["<|0.00|>", "Ġ", "f", "<|1.50|>"], id="last-window-no-cut"),
    # Rounded to the nearest 0.02 s: 1.509 -> 1.50, 2.511 -> 2.52; surrounding spaces give one leading space.
    pytest.param(Window("rec", 100.0, 130.0, (S(101.509, 102.511, "  hi there "),), None),
                 ["<|1.50|>", "Ġ", "h", "i", "Ġ", "t", "h", "e", "r", "e", "<|2.52|>"], id="rounding-and-spaces"),
    pytest.param(Window("rec", 0.0, 30.0, (S(0.0, 30.0, "ok"),), None), ["<|0.00|>", "Ġ", "o", "k", "<|30.00|>"],
                 id="full-30s"),
    pytest.param(Window("rec", 0.0, 5.0, (S(1.0, 2.0, ""),), None), ["<|1.00|>", "<|2.00|>"], id="empty-text"),
])
def test_timestamp_labels_token_by_token(tokenizer, window, tokens):
    labels = timestamp_labels(window, tokenizer, prefix_ids(tokenizer))
    assert tokenizer.convert_ids_to_tokens(labels) == PREFIX + tokens + ["<|endoftext|>"]


@pytest.mark.parametrize("seconds, token", [
    (0.0, "<|0.00|>"), (0.009, "<|0.00|>"), (0.011, "<|0.02|>"), (1.509, "<|1.50|>"), (1.511, "<|1.52|>"),
    (7.4, "<|7.40|>"), (29.989, "<|29.98|>"), (29.991, "<|30.00|>"), (30.0, "<|30.00|>"),
])
def test_timestamps_round_to_nearest_step(tokenizer, seconds, token):
    assert tokenizer.convert_ids_to_tokens(timestamp_token_id(tokenizer, seconds)) == token


@pytest.mark.parametrize("seconds, index", [(-1e-9, 0), (30.0000001, 1500), (15.0, 750)])
def test_timestamp_index_clamps_float_noise(seconds, index):
    assert timestamp_index(seconds) == index


def test_timestamp_ids_come_from_the_tokenizer(tokenizer, tiny_en_model_dir):
    """The English-only vocabulary has no language tokens: the same timestamp has another id there."""
    english = WhisperTokenizer.from_pretrained(tiny_en_model_dir)
    window = Window("rec", 0.0, 30.0, (S(0.0, 1.0, "a"),), 12.0)
    labels = timestamp_labels(window, english, english.convert_tokens_to_ids(["<|startoftranscript|>"]))
    assert english.convert_ids_to_tokens(labels) == ["<|startoftranscript|>", "<|0.00|>", "Ġ", "a", "<|1.00|>",
                                                     "<|12.00|>", "<|endoftext|>"]
    assert timestamp_token_id(english, 1.0) != timestamp_token_id(tokenizer, 1.0)


@pytest.mark.parametrize("duration, text, tokens", [
    (2.0, "hi", ["<|0.00|>", "Ġ", "h", "i", "<|2.00|>"]),
    (2.011, " hi", ["<|0.00|>", "Ġ", "h", "i", "<|2.02|>"]),
    (29.979, "hi", ["<|0.00|>", "Ġ", "h", "i", "<|29.98|>"]),
    (31.5, "hi", ["<|0.00|>", "Ġ", "h", "i", "<|30.00|>"]),
])
def test_single_segment_labels(tokenizer, duration, text, tokens):
    labels = single_segment_labels(duration, text, tokenizer, prefix_ids(tokenizer))
    assert tokenizer.convert_ids_to_tokens(labels) == PREFIX + tokens + ["<|endoftext|>"]


def test_single_segment_labels_reject_negative_duration(tokenizer):
    with pytest.raises(ValueError, match="negative"):
        single_segment_labels(-1.0, "hi", tokenizer, prefix_ids(tokenizer))


def test_prefix_with_notimestamps_is_refused(tokenizer):
    prefix = prefix_ids(tokenizer, PREFIX + ["<|notimestamps|>"])
    with pytest.raises(ValueError, match="notimestamps"):
        timestamp_labels(WINDOWS_70S[2], tokenizer, prefix)


def test_timestamp_ids_follow_notimestamps_without_named_tokens(tiny_model_dir, tokenizer):
    """Like tokenizer files saved before the Hub checkpoints named their timestamp tokens: the ids are
    the same, counted from <|notimestamps|>."""
    bare = WhisperTokenizer(os.path.join(tiny_model_dir, "vocab.json"), os.path.join(tiny_model_dir, "merges.txt"),
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                            pad_token="<|endoftext|>")
    bare.add_special_tokens({"additional_special_tokens": PREFIX[:1] + ["<|notimestamps|>"]})
    first = bare.convert_tokens_to_ids("<|notimestamps|>") + 1
    assert bare.convert_tokens_to_ids("<|0.00|>") in (None, bare.unk_token_id)  # the name is unknown
    assert timestamp_token_id(bare, 0.0) == first
    assert timestamp_token_id(bare, 2.0) == first + 100
    assert timestamp_token_id(tokenizer, 2.0) == tokenizer.convert_tokens_to_ids("<|2.00|>")


def test_tokenizer_without_notimestamps_is_reported(tiny_model_dir):
    bare = WhisperTokenizer(os.path.join(tiny_model_dir, "vocab.json"), os.path.join(tiny_model_dir, "merges.txt"),
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                            pad_token="<|endoftext|>")
    with pytest.raises(UserError, match=r"the tokenizer has no <\|notimestamps\|> token"):
        single_segment_labels(2.0, "hi", bare, [bare.eos_token_id])


KEYS = [f"rec{i:05d}@{(i % 7) * 30.0:.3f}" for i in range(4000)]


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.9])
def test_keeps_timestamps_share_is_near_the_ratio(ratio):
    share = sum(keeps_timestamps(key, ratio) for key in KEYS) / len(KEYS)
    assert abs(share - ratio) < 0.03


@pytest.mark.parametrize("ratio, expected", [(0.0, 0), (1.0, len(KEYS))])
def test_keeps_timestamps_extremes(ratio, expected):
    assert sum(keeps_timestamps(key, ratio) for key in KEYS) == expected


def test_keeps_timestamps_is_stable_and_nested():
    # crc32("rec00042@60.000") / 2**32 = 0.5345...: a fixed value, not Python's per-process salted hash().
    assert keeps_timestamps("rec00042@60.000", 0.535) and not keeps_timestamps("rec00042@60.000", 0.534)
    kept_low = {key for key in KEYS if keeps_timestamps(key, 0.3)}
    kept_high = {key for key in KEYS if keeps_timestamps(key, 0.6)}
    assert kept_low < kept_high  # raising the ratio only adds windows


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_keeps_timestamps_rejects_ratio_outside_0_1(ratio):
    with pytest.raises(ValueError, match="between 0 and 1"):
        keeps_timestamps("rec@0.000", ratio)


def test_within_label_limit(tokenizer):
    assert within_label_limit([0] * MAX_LABEL_TOKENS)
    assert not within_label_limit([0] * (MAX_LABEL_TOKENS + 1))
    # One byte per token here: 3 prefix + 2 timestamps + 1 space + 443 letters + eot = 450 tokens.
    long_window = Window("rec", 0.0, 30.0, (S(0.0, 30.0, "x" * 443),), None)
    assert not within_label_limit(timestamp_labels(long_window, tokenizer, prefix_ids(tokenizer)))


def test_lead_starts_windows_in_the_pause_before_their_first_segment():
    """With max_lead each window opens within the pause before its first segment (never inside the
    previous segment, never more than max_lead early), so not every window starts with speech at 0.00."""
    segments = [S(0.5, 3.0, "a"), S(4.0, 20.0, "b"), S(21.5, 29.0, "c"), S(29.2, 40.0, "d"), S(41.0, 44.0, "e")]
    packed = pack_windows("rec", segments, 45.0, max_lead=2.0)
    plain = pack_windows("rec", segments, 45.0)
    assert [w.segments for w in packed.windows] == [w.segments for w in plain.windows]
    previous_ends = [0.0, 29.0]  # the recording's start; then c, the last segment of the first window
    for window, previous_end in zip(packed.windows, previous_ends):
        first = window.segments[0].start
        assert max(previous_end, first - 2.0) <= window.start <= first
        assert window.end == min(window.start + WINDOW_SECONDS, 45.0)
    assert any(w.start < w.segments[0].start for w in packed.windows)
    assert pack_windows("rec", segments, 45.0, max_lead=2.0) == packed  # deterministic


def test_plan_windows_places_each_row_at_its_time_and_keeps_plain_rows_whole():
    ids = ["u0", "u1", "u2", "u3", "plain"]
    texts = ["a", "b", "c", "d", "hello"]
    recordings = ["r", "r", "r", "r", None]
    starts = [13.0, 0.0, 5.0, 28.4]
    ends = [28.0, 4.0, 12.5, 33.0]
    planned = plan_windows(ids, texts, recordings, starts + [None], ends + [None])
    plain = next(p for p in planned.plans if p.window is None)
    assert (plain.key, plain.rows, plain.offsets, plain.text) == ("plain", (4,), (0.0,), "hello")
    first = next(p for p in planned.plans if p.window is not None and p.window.segments[0].start == 0.0)
    assert first.rows == (1, 2, 0, 3)  # time order, then the cut segment d
    lead = first.window.start  # 0 .. 2 s before the first segment at 0.0: here 0 (the recording starts there)
    assert lead == 0.0
    assert first.offsets == (0.0, 5.0, 13.0, 28.4)
    assert first.window.next_start == 28.4
    assert planned.dropped_over_30s == 0
