"""What bench/concurrency.py sends: prompts no server has seen, KAREN-style conversations, one long prompt.

Every text is made from a seeded generator keyed by where it is used (workload, round, level,
request), so both servers get the same prompts and no prompt comes back in a later level or round:
neither side's prompt cache can answer for the other. Only the `repeated` workload sends the same
16 prompts again at every level (what the earlier benchmark did, and what flattered us).
"""

import random

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "List some things to pack for a weekend hike and say why.",
    "Describe the water cycle in simple words.",
    "Give me three ideas for a rainy afternoon.",
    "What makes a good cup of tea?",
    "Write a poem about the sea at night.",
    "Explain what a computer program is.",
    "Tell me about the planets in our solar system.",
    "How do bees make honey?",
    "Write a letter to a friend about a trip to the mountains.",
    "Why is the sky blue?",
    "Describe a busy market in the morning.",
    "Give some tips for learning to cook.",
    "What is the difference between weather and climate?",
    "Write a short dialogue between a cat and a dog.",
]

_WORDS = """
time year people way day man thing woman life child world school state family student group country problem
hand part place case week company system program question work government number night point home water room
mother area money story fact month lot right study book eye job word business issue side kind head house
service friend father power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history party result
change morning reason research girl guy moment air teacher force education foot boy age policy process music
market sense nation plan college interest death experience effect use class control care field development role
effort rate heart drug show leader light voice wife police mind price report decision son view relationship town
road arm difference value building action model season society tax director position player record paper space
ground form event official matter center couple site project activity star table need court oil situation cost
industry figure street image phone data picture practice piece land product doctor wall patient worker news test
movie north love support technology step baby computer type attention film tree source organization hair window
evidence population site garden river bridge island forest valley mountain harbor village bakery lantern
""".split()  # noqa: SIM905 (a paragraph reads better than 200 quoted words)

# What KAREN sends every turn: a long, fixed system prompt (about 320 tokens with SmolLM2's tokenizer).
KAREN_SYSTEM = (
    "You are KAREN, a personal assistant that runs on the user's own machine. You help with everyday tasks: "
    "planning a day, writing and answering messages, summarising documents the user shares, keeping notes, "
    "reminding the user of appointments, looking things up in the user's own files, and explaining things "
    "clearly. Follow these rules in every answer. Be brief: answer in a few sentences unless the user asks for "
    "more detail. Be concrete: give the steps, the numbers, the names, not general advice. When you are not sure, "
    "say so and say what would settle it. Never invent a fact about the user, their calendar, their files or "
    "their contacts; if you need one, ask for it. Keep the user's private data private: do not repeat passwords, "
    "tokens, card numbers or addresses back unless asked to. When the user asks for a plan, number the steps. "
    "When the user asks for a message, write it in the user's voice, ready to send, without a preamble. When "
    "the user asks about code, answer with the code first and a short explanation after it. When the user is "
    "upset, acknowledge it in one sentence and then help. Use the metric system unless the user uses another. "
    "Dates are written as day month year. Times use the 24-hour clock. If a request could cause harm to the "
    "user or to others, decline briefly and offer a safer way to reach the same goal. Remember what the user "
    "said earlier in this conversation and build on it rather than asking again. End your answer when the "
    "question is answered."
)

FOLLOW_UPS = [
    "Can you make that shorter?",
    "Now say it again for a ten year old.",
    "What would you add if I had more time?",
    "Give me one more example.",
    "Which part of that matters most, and why?",
    "Turn that into a checklist.",
]


def _rng(*key: object) -> random.Random:
    return random.Random("/".join(map(str, key)))


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def fresh_prompt(*key: object, low: int = 20, high: int = 400) -> str:
    """A prompt nobody sent before in this run: a note of random words, then a question.

    Its length is drawn between `low` and `high` tokens (about a token a word with this
    vocabulary); the server's usage says exactly how many it was.
    """
    rng = _rng("fresh", *key)
    question = rng.choice(QUESTIONS)
    target = rng.randint(low, high)
    note = _words(rng, max(1, target - 20))  # the question and the chat template add about 20
    return f"Notes {rng.randrange(10**9)}: {note}.\n\n{question}"


def repeated_prompt(index: int) -> str:
    """The earlier benchmark's prompts: the same 16 at every level, so caches answer most of each prompt."""
    return QUESTIONS[index % len(QUESTIONS)]


def karen_user_turn(conversation_key: tuple, turn: int) -> str:
    """The user's words at `turn` of one conversation: a fresh question first, then follow-ups."""
    rng = _rng("karen", *conversation_key, turn)
    if turn == 0:
        return f"{_words(rng, rng.randint(6, 30))}. {rng.choice(QUESTIONS)}"
    return f"{rng.choice(FOLLOW_UPS)} ({_words(rng, rng.randint(2, 8))})"


def long_prompt(*key: object, tokens: int = 3000) -> str:
    """About `tokens` tokens of text, then a question: the long prompt of the `long` workload."""
    rng = _rng("long", *key)
    return f"Read these notes.\n{_words(rng, tokens - 20)}.\n\nSummarise them in one sentence."
