from services.llm.chunker import iter_sentence_chunks


def chunks(text_pieces, min_words=8):
    return list(iter_sentence_chunks(iter(text_pieces), min_words))


def test_short_sentences_wait_for_eight_words():
    pieces = ["Sure!", " Lions", " live", " in", " prides.", " They", " hunt", " at", " night.", " Done"]
    # "Sure! Lions live in prides." is 5 words: held back; the next boundary makes it 9.
    assert chunks(pieces) == ["Sure! Lions live in prides. They hunt at night.", "Done"]


def test_cut_at_the_last_boundary_in_the_buffer():
    text = "One two three four. Five six seven eight. Nine"
    assert chunks([text]) == ["One two three four. Five six seven eight.", "Nine"]


def test_each_sentence_is_yielded_as_soon_as_it_completes():
    seen = []

    def pieces():
        for word in "Elephants are the largest land animals on Earth. Their".split(" "):
            seen.append(word)
            yield word + " "

    stream = iter_sentence_chunks(pieces())
    first = next(stream)
    assert first == "Elephants are the largest land animals on Earth."
    # The chunk came out before the generator read past the boundary's next token.
    assert seen[-1] in ("Earth.", "Their")


def test_boundary_needs_whitespace_or_end():
    # "3.5" is not a boundary: the dot is followed by a digit.
    assert chunks(["The value is 3.5 units of energy in total here now"]) == [
        "The value is 3.5 units of energy in total here now"
    ]


def test_question_and_exclamation_are_boundaries():
    text = "Do you know why the sky is blue? It is scattering of light! And"
    assert chunks([text]) == ["Do you know why the sky is blue? It is scattering of light!", "And"]


def test_flush_remainder_and_empty_stream():
    assert chunks(["no boundary at all"]) == ["no boundary at all"]
    assert chunks([]) == []
    assert chunks(["   "]) == []


def test_min_words_setting():
    assert chunks(["Hi there. How are you? Fine."], min_words=1) == ["Hi there. How are you? Fine."]
    assert chunks(["Hi there.", " How are you?"], min_words=1) == ["Hi there.", "How are you?"]


# --- fast mode: a short first clause, then the original rule -------------------------------------

import pytest

from services.llm.chunker import iter_chunks, iter_fast_chunks


def fast(text_pieces, first_min_words=3, min_words=8):
    return list(iter_fast_chunks(iter(text_pieces), first_min_words, min_words))


def test_fast_first_chunk_is_the_first_clause_of_three_words():
    pieces = [w + " " for w in "Cats purr for many reasons, mostly when they feel safe. They also purr to heal.".split()]
    assert fast(pieces) == ["Cats purr for many reasons,", "mostly when they feel safe. They also purr to heal."]


def test_fast_first_clause_skips_marks_before_three_words():
    pieces = ["Sure, ", "cats ", "purr ", "a ", "lot; ", "they ", "do."]
    assert fast(pieces) == ["Sure, cats purr a lot;", "they do."]


def test_fast_later_chunks_follow_the_original_eight_word_rule():
    text = "Yes, lions live in prides. They hunt. At night they rest in the shade. Done "
    assert fast([text]) == ["Yes, lions live in prides.", "They hunt. At night they rest in the shade.", "Done"]


def test_fast_never_splits_numbers():
    # Pieces arrive as tokens: "2," then "152" must not become a cut after "2,".
    pieces = ["The ", "moon ", "is ", "about ", "2,", "152", ",500 ", "miles ", "or ", "3.", "5 ", "light ", "seconds."]
    out = fast(pieces)
    assert out == ["The moon is about 2,152,500 miles or 3.5 light seconds."]


def test_fast_yields_the_first_clause_before_reading_further():
    seen = []

    def pieces():
        for word in "Elephants remember faces, friends and places for years.".split(" "):
            seen.append(word)
            yield word + " "

    stream = iter_fast_chunks(pieces())
    assert next(stream) == "Elephants remember faces,"
    assert seen[-1] == "faces,"  # cut as soon as the space after the comma arrived


def test_fast_flushes_and_handles_empty_streams():
    assert fast(["no mark at all"]) == ["no mark at all"]
    assert fast([]) == []
    assert fast(["Hi."]) == ["Hi."]


def test_iter_chunks_modes():
    text = ["Well, elephants are big animals. They eat grass all day long, every day. End"]
    assert list(iter_chunks(iter(text), "sentences")) == list(iter_sentence_chunks(iter(text)))
    assert list(iter_chunks(iter(text), "fast"))[0] == "Well, elephants are big animals."
    with pytest.raises(ValueError):
        list(iter_chunks(iter(text), "slow"))
