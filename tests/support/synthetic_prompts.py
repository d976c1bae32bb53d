"""Prompts of two kinds a router must tell apart (arithmetic and chit-chat), for the tests
that train routers on synthetic battles."""

from __future__ import annotations

import numpy as np

ARITH_TEMPLATES = [
    "What is {a} plus {b}?",
    "Compute {a} times {b}.",
    "Solve for x: {a}x + {b} = {c}.",
    "What is {a} divided by {b}, rounded to two decimals?",
    "Calculate {a} squared minus {b}.",
    "If a train travels {a} km in {b} hours, what is its average speed?",
]
CHAT = [
    "Hi! How was your weekend?",
    "Tell me something fun about cats.",
    "What's your favourite colour?",
    "Good morning, how are you doing today?",
    "Can you recommend a cosy movie for tonight?",
    "I just got a puppy, any name ideas?",
    "Say something nice to cheer me up.",
    "What should I have for breakfast?",
    "Do you like the rain?",
    "Tell me a joke about penguins.",
    "Hello there, nice to meet you!",
    "What is a fun thing to do on a sunny day?",
    "Which season do you like best?",
    "Any tips for a relaxing Sunday?",
    "Write a cheerful greeting for my friend.",
    "What's a good snack for a road trip?",
    "How do you say thanks in a fun way?",
    "Give me a compliment, please.",
    "What's a nice hobby to pick up?",
    "Tell me about your day.",
    "Hey, what's up?",
    "Suggest a name for my goldfish.",
    "What's a good song to sing in the shower?",
    "Wish me luck for my party tonight!",
    "What's the best pizza topping?",
    "Say hello to my little sister.",
    "Do you prefer cats or dogs?",
    "What's a fun fact about pandas?",
    "Recommend a board game for a family night.",
    "Thanks for chatting with me!",
    # the last six: held out by the tests
    "Hiya! What are you up to this evening?",
    "Tell me something cute about otters.",
    "What's a fun weekend plan with friends?",
    "Good evening! How has your day been?",
    "Can you suggest a nice name for a kitten?",
    "What's your favourite kind of ice cream?",
]


def arithmetic_prompts(n: int, rng: np.random.Generator) -> list[str]:
    """n arithmetic questions with random operands, cycling through the templates."""
    out = []
    for i in range(n):
        a, b, c = (int(x) for x in rng.integers(3, 999, size=3))
        out.append(ARITH_TEMPLATES[i % len(ARITH_TEMPLATES)].format(a=a, b=b, c=c))
    return out
