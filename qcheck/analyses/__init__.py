"""The analyses: pure functions of captured FP and quantized activations."""

# Bump an analysis's version whenever a change alters what its numbers mean (a metric's
# definition, the prompts, masking, a rule): every baseline records the version it was made
# with, and one made by another version fails as "the analysis changed", not as drift.
# Keys are the certification tests' marker names.
ANALYSIS_VERSIONS = {
    "activations": 1,
    "attention": 1,
    "features": 1,
    "logit_lens": 1,
    "circuits": 1,
    "fidelity": 1,
}

# The prompt set each analysis reads (qcheck/pair.py PROMPT_SETS); its token ids go into the
# baseline header, so a change of prompts reads as "the inputs changed", not as drift.
ANALYSIS_PROMPT_SETS = {
    "activations": "natural",
    "attention": "natural",
    "features": "natural",
    "logit_lens": "lens",
    "circuits": "induction",
    "fidelity": "natural",
}
