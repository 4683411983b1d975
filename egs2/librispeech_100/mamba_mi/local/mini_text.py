"""English sentences for the synthesized mini corpus.

A small template grammar draws words from the vocabulary in ``mini_words.txt``
(nouns, verbs, adjectives, adverbs, names, ...) and writes LibriSpeech-style
transcripts: upper case words, no punctuation except the apostrophe of a
possessive. Words earlier in each section of the vocabulary are drawn more often
(a Zipf-like law), so that, as in real text, a few hundred words cover most
tokens while the vocabulary stays above a thousand words.

Example:
    >>> lexicon = load_lexicon(DEFAULT_LEXICON)
    >>> sentences = unique_sentences(lexicon, 3, seed=0)
    >>> len(sentences)
    3
"""

import dataclasses
import random
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple

__all__ = [
    "DEFAULT_LEXICON",
    "Lexicon",
    "SentenceGenerator",
    "load_lexicon",
    "past_tense",
    "plural",
    "third_person",
    "unique_sentences",
]

DEFAULT_LEXICON = Path(__file__).resolve().parent / "mini_words.txt"

_SECTIONS = ("noun", "verb", "adjective", "adverb", "name", "preposition", "number", "pronoun")
# Function words the templates use besides the vocabulary sections.
_FUNCTION_WORDS = (
    "the a an and but that was were is are there when while because will could "
    "not very his her their my our some many every this its so then"
).split()
_VOWELS = "aeiou"
# Words starting with a vowel letter but a consonant sound, and the reverse.
_A_BEFORE = ("use", "usu", "uni", "eu", "one")
_AN_BEFORE = ("hour", "honest", "honor", "heir")


def plural(noun: str) -> str:
    """Regular English plural of a noun (``box`` -> ``boxes``, ``city`` -> ``cities``)."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in _VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    """Third person singular present of a verb (``watch`` -> ``watches``)."""
    if verb.endswith(("s", "x", "z", "ch", "sh", "o")):
        return verb + "es"
    if verb.endswith("y") and len(verb) > 1 and verb[-2] not in _VOWELS:
        return verb[:-1] + "ies"
    return verb + "s"


def past_tense(verb: str) -> str:
    """Regular past tense of a verb (``bake`` -> ``baked``, ``carry`` -> ``carried``)."""
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and len(verb) > 1 and verb[-2] not in _VOWELS:
        return verb[:-1] + "ied"
    return verb + "ed"


@dataclasses.dataclass(frozen=True)
class Lexicon:
    """Word lists of the grammar, each in frequency-rank order.

    Attributes:
        nouns: ``(singular, plural)`` pairs.
        verbs: ``(base, third person, past)`` triples.
        adjectives: Adjectives.
        adverbs: Adverbs.
        names: First names (lower case).
        prepositions: Prepositions.
        numbers: Number words used before plural nouns.
        pronouns: ``(subject, object)`` pairs.
    """

    nouns: Tuple[Tuple[str, str], ...]
    verbs: Tuple[Tuple[str, str, str], ...]
    adjectives: Tuple[str, ...]
    adverbs: Tuple[str, ...]
    names: Tuple[str, ...]
    prepositions: Tuple[str, ...]
    numbers: Tuple[str, ...]
    pronouns: Tuple[Tuple[str, str], ...]

    def base_words(self) -> Set[str]:
        """Distinct entries of the vocabulary file (lemmas), lower case."""
        words = {n[0] for n in self.nouns} | {v[0] for v in self.verbs}
        for group in (self.adjectives, self.adverbs, self.names, self.prepositions, self.numbers):
            words.update(group)
        words.update(p[0] for p in self.pronouns)
        return words

    def surface_words(self) -> Set[str]:
        """Every word form the generator can write, upper case."""
        words = set(_FUNCTION_WORDS)
        for forms in (*self.nouns, *self.verbs, *self.pronouns):
            words.update(forms)
        for group in (self.adjectives, self.adverbs, self.names, self.prepositions, self.numbers):
            words.update(group)
        words.update(name + "'s" for name in self.names)
        return {w.upper() for w in words}


def _unique(items: Iterable) -> tuple:
    seen = set()
    out = []
    for item in items:
        key = item[0] if isinstance(item, tuple) else item
        if key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)


def load_lexicon(path=DEFAULT_LEXICON) -> Lexicon:
    """Read a vocabulary file (format described at the top of ``mini_words.txt``).

    Args:
        path: The vocabulary file.

    Returns:
        The lexicon; a word listed twice in a section keeps its first rank.

    Raises:
        ValueError: If the file has a line outside a known section, a bad irregular
            form, or a section is missing or empty.
    """
    path = Path(path)
    sections: Dict[str, List[str]] = {}
    current = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            if current not in _SECTIONS:
                raise ValueError(f"{path}:{lineno}: unknown section [{current}]")
            sections.setdefault(current, [])
            continue
        if current is None:
            raise ValueError(f"{path}:{lineno}: words before the first [section] header")
        for token in line.split():
            if not all(c.isalpha() or c in "/'" for c in token) or token.count("/") > 1:
                raise ValueError(f"{path}:{lineno}: bad entry {token!r}")
            sections[current].append(token.lower())
    missing = [s for s in _SECTIONS if not sections.get(s)]
    if missing:
        raise ValueError(f"{path}: missing or empty section(s): {', '.join(missing)}")

    def split(token: str) -> Tuple[str, str]:
        base, _, form = token.partition("/")
        return base, form

    nouns = []
    for token in sections["noun"]:
        base, form = split(token)
        nouns.append((base, form or plural(base)))
    verbs = []
    for token in sections["verb"]:
        base, form = split(token)
        verbs.append((base, third_person(base), form or past_tense(base)))
    pronouns = []
    for token in sections["pronoun"]:
        base, form = split(token)
        if not form:
            raise ValueError(f"{path}: pronoun {base!r} needs its object form (e.g. he/him)")
        pronouns.append((base, form))
    return Lexicon(
        nouns=_unique(nouns),
        verbs=_unique(verbs),
        adjectives=_unique(sections["adjective"]),
        adverbs=_unique(sections["adverb"]),
        names=_unique(sections["name"]),
        prepositions=_unique(sections["preposition"]),
        numbers=_unique(sections["number"]),
        pronouns=_unique(pronouns),
    )


class SentenceGenerator:
    """Draws random sentences from a template grammar.

    Args:
        lexicon: The vocabulary.
        rng: The random source; the same seed gives the same sentences.
        zipf_offset: Word ``i`` (0-based rank in its section) is drawn with weight
            ``1 / (i + zipf_offset)``; larger values flatten the distribution.
    """

    def __init__(self, lexicon: Lexicon, rng: random.Random, zipf_offset: float = 3.0):
        if zipf_offset <= 0:
            raise ValueError(f"zipf_offset must be > 0, got {zipf_offset}")
        self.lexicon = lexicon
        self.rng = rng
        self._cum_weights: Dict[int, List[float]] = {}
        self._zipf_offset = zipf_offset
        self._templates = (
            self._t_svo,
            self._t_svo_pp,
            self._t_sv_adv,
            self._t_plural_present,
            self._t_singular_present,
            self._t_reported,
            self._t_there_was,
            self._t_when,
            self._t_description,
            self._t_pair,
            self._t_future,
            self._t_because,
            self._t_fronted_adverb,
        )

    # Word choice -------------------------------------------------------------
    def _pick(self, items: Sequence):
        n = len(items)
        cum = self._cum_weights.get(n)
        if cum is None:
            total = 0.0
            cum = []
            for i in range(n):
                total += 1.0 / (i + self._zipf_offset)
                cum.append(total)
            self._cum_weights[n] = cum
        return self.rng.choices(items, cum_weights=cum, k=1)[0]

    def _chance(self, p: float) -> bool:
        return self.rng.random() < p

    @staticmethod
    def _article(word: str) -> str:
        if word.startswith(_AN_BEFORE):
            return "an"
        if word[0] in _VOWELS and not word.startswith(_A_BEFORE):
            return "an"
        return "a"

    def _noun_phrase(self, allow_name: bool = True) -> List[str]:
        """A singular noun phrase: ``the old dog``, ``a box``, ``mary``, ``john's hat``."""
        r = self.rng.random()
        if allow_name and r < 0.15:
            return [self._pick(self.lexicon.names)]
        noun = self._pick(self.lexicon.nouns)[0]
        words = [self._pick(self.lexicon.adjectives)] if self._chance(0.4) else []
        words.append(noun)
        if allow_name and r < 0.22:
            return [self._pick(self.lexicon.names) + "'s"] + words
        if r < 0.6:
            return ["the"] + words
        if r < 0.85:
            return [self._article(words[0])] + words
        return [self.rng.choice(("his", "her", "their", "my", "our", "this"))] + words

    def _plural_phrase(self) -> List[str]:
        """A plural noun phrase: ``three small cats``, ``the boats``, ``many birds``."""
        noun = self._pick(self.lexicon.nouns)[1]
        words = [self._pick(self.lexicon.adjectives)] if self._chance(0.35) else []
        det = self.rng.choice(("the", "the", "some", "many", "number", "their"))
        if det == "number":
            det = self._pick(self.lexicon.numbers)
        return [det] + words + [noun]

    def _verb(self, form: int) -> str:
        return self._pick(self.lexicon.verbs)[form]

    def _prep_phrase(self) -> List[str]:
        return [self._pick(self.lexicon.prepositions)] + self._noun_phrase(allow_name=False)

    def _pronoun(self, form: int = 0) -> str:
        return self.rng.choice(self.lexicon.pronouns)[form]

    # Templates ---------------------------------------------------------------
    def _t_svo(self):
        return self._noun_phrase() + [self._verb(2)] + self._noun_phrase()

    def _t_svo_pp(self):
        return self._noun_phrase() + [self._verb(2)] + self._noun_phrase() + self._prep_phrase()

    def _t_sv_adv(self):
        return self._noun_phrase() + [self._verb(2)] + self._noun_phrase(False) + [self._pick(self.lexicon.adverbs)]

    def _t_plural_present(self):
        return self._plural_phrase() + [self._verb(0)] + self._noun_phrase() + self._prep_phrase()

    def _t_singular_present(self):
        return self._noun_phrase() + [self._verb(1)] + self._plural_phrase()

    def _t_reported(self):
        head = self.rng.choice(("said", "knew", "thought", "felt", "heard", "believed", "hoped", "remembered"))
        subject = [self._pronoun()] if self._chance(0.5) else [self._pick(self.lexicon.names)]
        return subject + [head, "that"] + self._noun_phrase() + ["was", self._pick(self.lexicon.adjectives)]

    def _t_there_was(self):
        if self._chance(0.5):
            noun = self._pick(self.lexicon.nouns)[0]
            adj = self._pick(self.lexicon.adjectives)
            return ["there", "was", self._article(adj), adj, noun] + self._prep_phrase()
        return ["there", "were"] + self._plural_phrase() + self._prep_phrase()

    def _t_when(self):
        return (
            ["when"] + self._noun_phrase() + [self._verb(2)] + self._noun_phrase()
            + [self._pronoun(), self._verb(2), self._pronoun(1), self._pick(self.lexicon.adverbs)]
        )

    def _t_description(self):
        first = self._pick(self.lexicon.adjectives)
        second = self._pick(self.lexicon.adjectives)
        return self._noun_phrase() + ["was", "very", first, "and", second]

    def _t_pair(self):
        return self._noun_phrase() + ["and"] + self._noun_phrase() + [self._verb(2)] + self._prep_phrase()

    def _t_future(self):
        return (
            self._noun_phrase() + ["will", self._verb(0)] + self._noun_phrase(False)
            + [self.rng.choice(("tomorrow", "soon", "again", "today", "together"))]
        )

    def _t_because(self):
        return (
            [self._pronoun(), "could", "not", self._verb(0)] + self._noun_phrase(False)
            + ["because"] + self._noun_phrase() + ["was", self._pick(self.lexicon.adjectives)]
        )

    def _t_fronted_adverb(self):
        return [self._pick(self.lexicon.adverbs)] + self._noun_phrase() + [self._verb(2)] + self._plural_phrase()

    def sentence(self) -> str:
        """One sentence in LibriSpeech transcript style (upper case, no punctuation)."""
        words = self.rng.choice(self._templates)()
        return " ".join(words).upper()


def unique_sentences(lexicon: Lexicon, n: int, seed: int, exclude: Iterable[str] = (), max_tries: int = 50) -> List[str]:
    """Draw ``n`` distinct sentences, none of them in ``exclude``.

    Args:
        lexicon: The vocabulary.
        n: How many sentences.
        seed: Seed of the random source.
        exclude: Sentences that must not appear.
        max_tries: Gives up after ``max_tries * n`` draws.

    Returns:
        The sentences in the order drawn.

    Raises:
        ValueError: If ``n`` is negative.
        RuntimeError: If the grammar cannot produce enough distinct sentences.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    generator = SentenceGenerator(lexicon, random.Random(seed))
    seen = set(exclude)
    out = []
    for _ in range(max_tries * max(n, 1)):
        if len(out) == n:
            break
        s = generator.sentence()
        if s not in seen:
            seen.add(s)
            out.append(s)
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} distinct sentences after {max_tries * n} draws; wanted {n}")
    return out
