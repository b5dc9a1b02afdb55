from enclave.providers.llamacpp import _StopMatcher


def feed_all(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher = _StopMatcher(stops)
    out = ""
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + matcher.flush(), False


def test_stop_across_pieces_is_cut_exactly() -> None:
    assert feed_all(("END",), ["Hello E", "N", "D and more"]) == ("Hello ", True)


def test_partial_match_is_released_when_it_turns_out_not_to_match() -> None:
    assert feed_all(("END",), ["Hello E", "N", "x"]) == ("Hello ENx", False)


def test_no_stops_passes_through() -> None:
    assert feed_all((), ["a", "b"]) == ("ab", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(("\n\n", "Q:"), ["one Q: two\n\n"]) == ("one ", True)
