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
