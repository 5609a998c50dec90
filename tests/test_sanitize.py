import pytest

from services.tts.sanitize import clean_for_tts


@pytest.mark.parametrize(
    "raw, spoken",
    [
        ("Lions hunt at night\u2014mostly.", "Lions hunt at night, mostly."),  # em-dash
        ("Open 9\u20135 daily.", "Open 9 to 5 daily."),  # en-dash
        ("Wait\u2026 what?", "Wait... what?"),  # ellipsis
        ("\u201cHello\u201d, she said \u2018hi\u2019.", "\"Hello\", she said 'hi'."),  # curly quotes
        ("It\u2019s 20\u00b0 and 4 m\u00b2.", "It's 20 degrees and 4 m squared."),
        ("This is **very** important.", "This is very important."),  # bold
        ("An *italic* word.", "An italic word."),  # italic
        ("Run ```python\nprint(1)\n``` now.", "Run now."),  # fenced code
        ("Call `foo()` twice.", "Call twice."),  # inline code
        ("## Header\nText.", "Header\nText."),  # header marks go, the words stay
        ("- first\n- second", "first\nsecond"),  # bullets
        ("1. one\n2. two", "one\ntwo"),  # numbered list
        ("See [the docs](http://example.com) now.", "See the docs now."),  # link
        ("Tyres at 32 PSI.", "Tyres at 32 P.S.I."),
        ("CO2 and DNA.", "C O 2 and D.N.A."),
        ("Less CO2.", "Less C O 2."),
        ("AI uses an API and an LLM.", "A.I. uses an A.P.I. and an L.L.M."),
        ("Caf\u00e9 na\u00efve \u2603 ok", "Caf na ve ok"),  # any other non-ASCII is dropped
    ],
)
def test_original_cases(raw, spoken):
    assert clean_for_tts(raw) == spoken


def test_abbreviations_only_as_whole_words():
    assert clean_for_tts("PAID MAIL DNAse") == "PAID MAIL DNAse"


def test_result_is_ascii():
    assert clean_for_tts("\u00bfQu\u00e9? \u4f60\u597d \u2014 fine").isascii()


def test_markup_only_becomes_empty():
    assert clean_for_tts("```\ncode\n```") == ""
