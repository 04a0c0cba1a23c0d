"""Prompt sets written for qcheck (none is in the zoo's training text).

Short on purpose: the byte-level GPT-2 zoo models have a 64-token context, and every prompt must
fit whole (BOS + at most 63 bytes) so every model sees the same text. Tokenizer models read the
same strings; `encode_prompts` truncates to the model's context.
"""

from __future__ import annotations

NATURAL = {
    "facts": [
        "The capital of France is Paris; the capital of Italy is Rome.",
        "Water boils at one hundred degrees Celsius at sea level.",
        "The Moon orbits the Earth about once every twenty-seven days.",
        "Copper and silver are good conductors of electricity.",
        "Mount Everest is the highest mountain above sea level.",
        "A year on Mars lasts almost twice as long as a year on Earth.",
        "Bees collect nectar from flowers and turn it into honey.",
        "The Pacific is the largest and deepest ocean on the planet.",
    ],
    "code": [
        "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
        "for i in range(10):\n    if i % 2 == 0:\n        print(i)",
        "import os\np = os.path.join(root, name)\nif os.path.isdir(p):",
        "class Point:\n    def __init__(self, x, y):\n        self.x = x",
        "with open(filename) as f:\n    lines = f.read().splitlines()",
        "result = [x * x for x in values if x > 0]\nreturn sum(result)",
        "try:\n    value = int(text)\nexcept ValueError:\n    value = None",
        "while queue:\n    node = queue.pop(0)\n    seen.add(node)",
    ],
    "math": [
        "Two plus two is four, and three times three is nine.",
        "If x = 3 and y = 4, then x * x + y * y = 25.",
        "The sum of the angles of a triangle is 180 degrees.",
        "1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048",
        "A prime number has exactly two divisors: one and itself.",
        "The derivative of x squared is two x.",
        "10 - 3 = 7; 7 * 6 = 42; 42 / 2 = 21; 21 + 1 = 22",
        "The square root of 144 is 12 and of 169 is 13.",
    ],
    "prose": [
        "The old house stood at the end of the lane, quiet and dark.",
        "She opened the window and let the cold morning air come in.",
        "After the storm, the streets were full of broken branches.",
        "He read the letter twice before he put it back in the drawer.",
        "The train was late again, so they waited on the platform.",
        "In the spring the river rises and floods the low fields.",
        "The children ran across the garden, laughing and shouting.",
        "Nobody knew who had left the small box on the doorstep.",
    ],
    "dialogue": [
        "Alice: Are you coming tonight?\nBob: Yes, I will be there at 8.",
        "Q: What time is it?\nA: It is a quarter past three.",
        "\"Where are my keys?\" she asked. \"On the table,\" he said.",
        "User: How do I reset my password?\nAgent: Click on the link.",
        "Tom: I lost the game.\nAnna: Never mind, you will win next time.",
        "\"Can you help me?\" \"Of course. What do you need?\"",
        "Q: Is it going to rain today?\nA: Probably, take an umbrella.",
        "Me: Thanks for the book!\nYou: You are welcome, enjoy it.",
    ],
}

# The logit lens reads the last position: prompts whose next token is well determined.
LOGIT_LENS = [
    "The capital of France is Paris, and the capital of Italy is",
    "one, two, three, four, five, six, seven, eight, nine,",
    "for i in range(10):\n    print(",
    "Monday, Tuesday, Wednesday, Thursday,",
    "The quick brown fox jumps over the lazy",
    "A, B, C, D, E, F, G, H, I, J, K,",
    "def main():\n    return",
    "Q: What is two plus two?\nA:",
    "January, February, March, April,",
    "import numpy as",
    "Once upon a",
    "red, green, blue, red, green, blue, red, green,",
    "The sun rises in the east and sets in the",
    "if x > 0:\n    return x\nelse:\n    return",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Thank you very",
]


def natural_texts() -> list[str]:
    return [text for category in sorted(NATURAL) for text in NATURAL[category]]


def encode_prompts(texts: list[str], encode, n_ctx: int) -> list[list[int]]:
    """Token lists, each cut to the model's context (BOS included by `encode`)."""
    return [encode(text)[:n_ctx] for text in texts]
