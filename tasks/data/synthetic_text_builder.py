"""A generated character-level language: text for meta-training language models.

Why: the only real text every machine has (the stdlib sources, `stdlib_chars`) is held out for
evaluation, so meta-training needs other text. A learned optimizer meets an LM's tensors
(embedding, attention, readout) through the architecture more than through the data, so a
language with the statistics that matter to a byte-level LM is enough: a Zipfian lexicon of
words spelled by a letter bigram model, word classes ordered by a Markov chain, punctuation,
capitals and paragraphs. Everything comes from one NumPy PCG64 stream (`SEED`), so the corpus is
the same on every machine and version.

Splits: `NUM_DOCS` documents, every `TEST_EVERY`-th (index % TEST_EVERY == 0) in `test`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SEED = 20261204
NUM_DOCS = 1000
TEST_EVERY = 10
LEXICON_SIZE = 4000
NUM_CLASSES = 12
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _cdf(p: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(p)
    return cdf / cdf[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """`rng.choice(len(cdf), p=p)` with the cumulative `cdf` of p precomputed: the same draw from
    the same stream (one uniform), without recomputing the sum on every call."""
    return int(cdf.searchsorted(rng.random(), side="right"))


def _lexicon(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Words spelled by a random letter bigram model, and each word's class."""
    first_cdf = _cdf(rng.dirichlet(np.full(26, 0.5)))
    next_cdfs = [_cdf(p) for p in rng.dirichlet(np.full(26, 0.3), size=26)]
    words = set()
    while len(words) < LEXICON_SIZE:
        length = 1 + rng.poisson(4.0)
        letters = [_draw(rng, first_cdf)]
        for _ in range(length - 1):
            letters.append(_draw(rng, next_cdfs[letters[-1]]))
        words.add("".join(LETTERS[letters]))
    words = sorted(words)
    rng.shuffle(words)
    return words, rng.integers(NUM_CLASSES, size=len(words))


def generate_documents(num_docs: int = NUM_DOCS, seed: int = SEED) -> list[str]:
    """The corpus, deterministic in `seed` (paragraphs of sentences of Markov-ordered words)."""
    rng = np.random.default_rng(seed)
    words, word_class = _lexicon(rng)
    members = [np.flatnonzero(word_class == c) for c in range(NUM_CLASSES)]
    # Zipfian frequencies within each class; a sparse class-to-class transition matrix.
    zipf = [1.0 / np.arange(1, len(m) + 1) ** 1.1 for m in members]
    zipf_cdfs = [_cdf(z / z.sum()) for z in zipf]
    trans_cdfs = [_cdf(p) for p in rng.dirichlet(np.full(NUM_CLASSES, 0.2), size=NUM_CLASSES)]
    start_cdf = _cdf(rng.dirichlet(np.full(NUM_CLASSES, 0.5)))
    docs = []
    for _ in range(num_docs):
        paragraphs = []
        for _ in range(rng.integers(2, 6)):
            sentences = []
            for _ in range(rng.integers(3, 9)):
                c = _draw(rng, start_cdf)
                tokens = []
                for i in range(rng.integers(4, 18)):
                    w = words[members[c][_draw(rng, zipf_cdfs[c])]]
                    tokens.append(w + ("," if rng.random() < 0.06 else ""))
                    c = _draw(rng, trans_cdfs[c])
                tokens[0] = tokens[0].capitalize()
                sentences.append(" ".join(tokens).rstrip(",") + rng.choice([".", ".", ".", "?", "!"]))
            paragraphs.append(" ".join(sentences))
        docs.append("\n\n".join(paragraphs) + "\n")
    return docs


class LoptSynthText(tfds.core.GeneratorBasedBuilder):
    """TFDS name `lopt_synth_text`: one `text` example per generated document."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"{NUM_DOCS} documents of a generated language, seed {SEED}."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        docs = generate_documents()
        test = [(i, d) for i, d in enumerate(docs) if i % TEST_EVERY == 0]
        train = [(i, d) for i, d in enumerate(docs) if i % TEST_EVERY != 0]
        return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

    def _generate_examples(self, docs):
        for i, text in docs:
            yield i, {"text": text}
