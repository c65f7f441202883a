"""Normaliser and primary metric over the world's scripts: the exact normalised text, the metric chosen by
language, and that one changed character changes the score the user reads."""
import pytest

from whisper_finetune.errors import UserError
from whisper_finetune.scoring import score
from whisper_finetune.text import choose_metric, choose_normalizer, get_normalizer

# (language, raw text, exact normalised text, metric, a one-character edit of the raw text)
SCRIPTS = [
    ("es", "¿Dónde está el niño? ¡Aquí!", "dónde está el niño aquí", "wer", ("ñ", "n")),
    ("sv", "Jag åker till Göteborg, på måndag.", "jag åker till göteborg på måndag", "wer", ("å", "a")),
    ("de", "Straße und Größe: ÄRGER!", "strasse und grösse ärger", "wer", ("Ä", "A")),
    ("vi", "Tiếng Việt có dấu, rất khó.", "tiếng việt có dấu rất khó", "wer", ("ế", "ê")),
    ("ru", "Привет, как дела? Всё хорошо.", "привет как дела всё хорошо", "wer", ("ё", "е")),
    ("uk", "Їжак їсть яблуко — і ґудзик.", "їжак їсть яблуко і ґудзик", "wer", ("ґ", "г")),
    ("el", "Καλημέρα, ΤΙ ΚΑΝΕΙΣ;", "καλημέρα τι κανεισ", "wer", ("έ", "ε")),
    ("ar", "مَرْحَبًا، كيف حالك؟", "مَرْحَبًا كيف حالك", "wer", ("ك", "ق")),
    ("ur", "آپ کیسے ہیں؟ میں ٹھیک ہوں۔", "آپ کیسے ہیں میں ٹھیک ہوں", "wer", ("ٹ", "ت")),
    ("he", "שָׁלוֹם, מה שלומך?", "שָׁלוֹם מה שלומך", "wer", ("ש", "ס")),
    ("hi", "मैं दिल्ली में रहता हूँ।", "मैं दिल्ली में रहता हूँ", "wer", ("ा", "ी")),
    ("bn", "আমি বাংলায় গান গাই।", "আমি বাংলায় গান গাই", "wer", ("া", "ি")),
    ("ta", "நான் தமிழ் பேசுகிறேன்.", "நான் தமிழ் பேசுகிறேன்", "wer", ("ே", "ெ")),
    ("te", "నేను తెలుగు మాట్లాడతాను.", "నేను తెలుగు మాట్లాడతాను", "wer", ("ే", "ె")),
    ("th", "สวัสดีครับ, คุณสบายดีไหม?", "สวัสดีครับ คุณสบายดีไหม", "cer", ("ี", "ิ")),
    ("ja", "今日は、いい天気ですね。ＡＢＣ！", "今日は いい天気ですね abc", "cer", ("が", "か")),
    ("zh", "你好，世界！今天天气很好。", "你好 世界 今天天气很好", "cer", ("好", "号")),
    ("ko", "안녕하세요, 만나서 반갑습니다!", "안녕하세요 만나서 반갑습니다", "wer", ("반", "빈")),
]


@pytest.mark.parametrize("language, raw, normalised, metric, edit", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_normaliser_and_metric_by_script(language, raw, normalised, metric, edit):
    normalizer = choose_normalizer(language)
    assert normalizer == "unicode"
    assert get_normalizer(normalizer)(raw) == normalised
    assert choose_metric(language) == metric
    if edit[0] not in raw:  # the Japanese edit voices a kana the sentence lacks: put it in first
        raw = raw.replace("い", edit[0], 1)
    assert edit[0] in raw
    changed = raw.replace(edit[0], edit[1], 1)
    same = score([raw], [raw], normalizer, metric)
    worse = score([raw], [changed], normalizer, metric)
    assert same["primary_metric"] == metric and same["score"] == 0
    assert worse["score"] > 0 and worse["score"] == worse[metric]


def test_unspaced_languages_make_wer_noise_and_cer_signal():
    # Two characters wrong (す -> した) in a Japanese sentence the decoder also spaced after は: 3 edits in
    # 10 characters, but the one-"word" reference makes WER 2.0 (one substitution, one insertion).
    reference, hypothesis = "今日はいい天気ですね", "今日は いい天気でしたね"
    scores = score([reference], [hypothesis], "unicode", choose_metric("ja"))
    assert scores["wer"] == 2.0 and scores["primary_metric"] == "cer" and scores["score"] == pytest.approx(0.3)


def test_indic_is_an_alias_of_unicode_and_metric_override():
    assert choose_normalizer("hi", requested="indic") == "unicode"
    assert get_normalizer("indic")("ज़रा।") == get_normalizer("unicode")("ज़रा।") == "ज़रा"
    assert choose_metric("ko", requested="cer") == "cer" and choose_metric("ja", requested="wer") == "wer"
    with pytest.raises(UserError, match="--primary_metric ter: choose one of wer, cer"):
        choose_metric("ja", requested="ter")
