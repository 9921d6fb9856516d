"""A slot's text: held back while it could still become a stop string, cut at one, whole UTF-8 only."""

from inference.engine import Job, Sampling
from inference.engine.slots import QueuedItem, SlotRequest


def request(stop: list[str]) -> SlotRequest:
    job = Job(model_id="m", kind="completion", prompt="x", sampling=Sampling(stop=stop))
    return SlotRequest(QueuedItem(job, None, [1], None), None, [], 8, 0.0)


def test_text_that_could_grow_into_a_stop_string_waits_and_the_stop_string_ends_it():
    slot = request(["END"])
    steps = [slot.take_text(piece) for piece in (b"Hel", b"lo E", b"N", b"D more")]
    assert steps == [("Hel", False), ("lo ", False), ("", False), ("", True)]


def test_the_text_before_a_stop_string_in_the_same_token_is_handed_over():
    assert request(["\n\n"]).take_text(b"done.\n\nnext") == ("done.", True)


def test_a_character_split_across_tokens_is_handed_over_whole():
    slot = request([])
    assert [slot.take_text(b"caf\xc3"), slot.take_text(b"\xa9!")] == [("caf", False), ("\u00e9!", False)]
