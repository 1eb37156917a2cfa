"""What a semantic candidate must pass to be served: the threshold, then the guards. Pure: no IO.

An embedding places "Track order 48213" and "Track order 48231", or "Cancel my
subscription" and "Don't cancel my subscription", as close together as two
true paraphrases (cosine 0.9+ with MiniLM, see docs/tuning.md): the tokens that
decide the answer are a small part of the text. A guard looks only at such
tokens and vetoes a candidate whose tokens differ from the query's. Guards can
only turn a hit into a miss, never the reverse, so a guard that misfires costs
a hit (an upstream call), never a wrong answer.

Each guard is a small function over two `TextFeatures` (extracted once per
text and memoised), registered by name in `GUARDS`; configuration switches
them by name. Registry order is the order of checks, most specific first, so a
veto's reason names the most telling difference.

| guard | vetoes when the two texts differ in | e.g. |
|---|---|---|
| identifier | codes mixing letters and digits, #123, long digit runs, emails, URLs | order A-1234 vs A-1243 |
| currency | currencies named (symbol, code or word) and currency amounts | £50 vs $50 |
| date | weekdays, months, years, dates, clock times, relative days, seasons | Saturday vs Sunday |
| number | numeric values: digits, decimals, percentages, ordinals, one..ninety | 2-bedroom vs 3-bedroom |
| negation | polarity: not/no/never/n't/without... in one only; un-/non-/dis-/in- + a word of the other | can vs can't, safe vs unsafe |
| opposites | a word of a general-English pair of opposites in one, its opposite in the other | increase vs decrease |
| entity | proper nouns (capitalised mid-sentence, camelCase, acronyms) absent from the other text | Salesforce vs HubSpot |

The entity guard is deliberately list-free: a capitalised word in one text
only needs to appear, in any case, somewhere in the other, so "paypal" typed
in lower case still matches "PayPal". Text typed in Title Case or ALL CAPS says
nothing about proper nouns and is skipped by that guard.

What guards cannot see: differences carried by ordinary words ("my password"
vs "my colleague's password", "home insurance" vs "car insurance"). Those stay
with the threshold, the per-category policy and verified mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from cascache._types import CacheEntry, Namespace, Scope

__all__ = [
    "ALL_GUARDS",
    "DEFAULT_GUARDS",
    "GUARDS",
    "Choice",
    "GuardSet",
    "TextFeatures",
    "Veto",
    "accept",
    "choose",
    "choose_ranked",
    "eligible",
    "features",
    "validate_guard_names",
    "veto",
    "veto_for",
]

# --- token tables ------------------------------------------------------------------------
# fmt: off
_NEGATION_WORDS: Final = frozenset(
    "not no never none nothing nobody nowhere neither nor without cannot unable nope".split()
    # n't written without the apostrophe, as real traffic often is:
    + "dont doesnt didnt cant wont isnt arent wasnt werent havent hasnt hadnt shouldnt wouldnt couldnt mustnt "
      "neednt".split()
)
#: Prefixes that negate a word; "unsafe" vs "safe" counts only when the bare word is in the other text.
_NEGATING_PREFIXES: Final = ("non-", "non", "un", "dis", "in", "im", "il", "ir")
_MIN_STEM: Final = 4

#: General-English opposites whose swap flips the answer. Kept short and domain-free on purpose:
#: a long list fitted to one test set would not generalise. Multi-word items match as phrases.
_OPPOSITES: Final[tuple[tuple[str, str], ...]] = (
    ("increase", "decrease"), ("increase", "reduce"), ("raise", "lower"), ("enable", "disable"),
    ("activate", "deactivate"), ("allow", "ban"), ("allow", "forbid"), ("allow", "prohibit"),
    ("allow", "block"), ("include", "exclude"), ("add", "remove"), ("add", "delete"), ("start", "stop"),
    ("start", "end"), ("begin", "end"), ("buy", "sell"), ("import", "export"), ("upload", "download"),
    ("before", "after"), ("above", "below"), ("over", "under"), ("more", "less"), ("more", "fewer"),
    ("most", "least"), ("maximum", "minimum"), ("max", "min"), ("highest", "lowest"),
    ("cheapest", "dearest"), ("inbound", "outbound"), ("deposit", "withdraw"), ("send", "receive"),
    ("arrive", "depart"), ("accept", "reject"), ("accept", "decline"), ("approve", "reject"),
    ("approve", "deny"), ("win", "lose"), ("positive", "negative"), ("open", "close"), ("open", "closed"),
    ("early", "late"), ("earliest", "latest"), ("first", "last"), ("upgrade", "downgrade"),
    ("join", "leave"), ("credit", "debit"), ("benefit", "drawback"), ("benefit", "risk"),
    ("advantage", "drawback"), ("pros", "cons"), ("safe", "dangerous"), ("legal", "illegal"),
    ("true", "false"), ("right", "wrong"), ("hot", "cold"), ("warm", "cold"), ("heavy", "light"),
    ("fast", "slow"), ("large", "small"), ("big", "small"), ("long", "short"), ("young", "old"),
    ("new", "used"), ("public", "private"), ("input", "output"), ("internal", "external"),
    ("domestic", "international"), ("turn on", "turn off"), ("switch on", "switch off"),
    ("log in", "log out"), ("sign in", "sign out"), ("opt in", "opt out"), ("check in", "check out"),
)

_WEEKDAYS: Final = tuple("monday tuesday wednesday thursday friday saturday sunday".split())
_MONTHS: Final = tuple(
    "january february march april may june july august september october november december".split()
)
#: Month names that are also everyday words: they count only when capitalised.
_AMBIGUOUS_MONTHS: Final = frozenset({"march", "may", "august"})
_RELATIVE_DAYS: Final = frozenset(
    "today tonight tomorrow yesterday weekend weekends weekday weekdays morning mornings afternoon "
    "afternoons evening evenings overnight noon midday midnight winter summer autumn".split()
)
_GREETINGS: Final = frozenset({"morning", "afternoon", "evening"})
_RELATIVE_PERIODS: Final = re.compile(
    r"\b(next|last|this|previous|coming)\s+(week|month|year|quarter|weekend|" + "|".join(_WEEKDAYS) + r")\b"
)

_SMALL_NUMBERS: Final = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_TENS: Final = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES: Final = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS: Final = {**_SMALL_NUMBERS, **_TENS, "dozen": 12, "twice": 2, "double": 2, "half": 0.5}
#: "one" is a pronoun after these words ("which one", "this one", "no one").
_PRONOUN_ONE_BEFORE: Final = frozenset(
    "which this that the each every any no another new old other right wrong same a quick".split()
)

#: Currency words and symbols -> ISO code. "$" is read as USD: its other users are still a currency change.
_CURRENCIES: Final = {
    "£": "GBP", "gbp": "GBP", "pound": "GBP", "pounds": "GBP", "sterling": "GBP", "quid": "GBP",
    "pence": "GBP", "p": "GBP", "$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD", "bucks": "USD",
    "cents": "USD", "€": "EUR", "eur": "EUR", "euro": "EUR", "euros": "EUR", "¥": "JPY", "jpy": "JPY",
    "yen": "JPY", "yuan": "CNY", "cny": "CNY", "rmb": "CNY", "₹": "INR", "inr": "INR", "rupee": "INR",
    "rupees": "INR", "chf": "CHF", "franc": "CHF", "francs": "CHF", "aud": "AUD", "cad": "CAD",
    "nzd": "NZD", "sek": "SEK", "nok": "NOK", "dkk": "DKK", "pln": "PLN", "huf": "HUF", "czk": "CZK",
    "try": "TRY", "mxn": "MXN", "brl": "BRL", "zar": "ZAR", "hkd": "HKD", "sgd": "SGD", "krw": "KRW",
    "₩": "KRW", "rub": "RUB", "₽": "RUB", "₺": "TRY", "aed": "AED", "btc": "BTC", "bitcoin": "BTC",
    "eth": "ETH", "ethereum": "ETH",
}

#: Codes that are also common words (or letters): only counted in upper case or next to an amount.
_AMBIGUOUS_CURRENCY_WORDS: Final = frozenset({"try", "p", "rub", "cad", "eth"})
_SYMBOLS: Final = "£$€¥₹₩₽₺"
# fmt: on

# --- tokenising --------------------------------------------------------------------------

_APOSTROPHES: Final = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_WORD: Final = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")
_TOKEN: Final = re.compile(r"\S+")
_SENTENCE_END: Final = re.compile(r"[.!?:;\n]\s*$")
_EMAIL: Final = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL: Final = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_HASH_ID: Final = re.compile(r"#\s?(\d+)")
_ALNUM: Final = re.compile(r"(?<![\w-])([A-Za-z0-9]+(?:[-_/][A-Za-z0-9]+)*)(?![\w-])")
_ORDINAL: Final = re.compile(r"^\d+(?:st|nd|rd|th)$", re.IGNORECASE)
_TIME_TOKEN: Final = re.compile(r"^\d{1,2}(?::\d{2})?(?:am|pm|h)$", re.IGNORECASE)
#: A number with a short unit glued on ("10kg", "5km", "2gb") or hyphenated to words
#: ("2-bedroom", "6-year-old"): a number, the number guard's business, not an identifier.
_NUMBER_UNIT: Final = re.compile(r"^\d+(?:\.\d+)?(?:[a-z]{1,3}|(?:-[a-z]+)+)$", re.IGNORECASE)
_CLOCK: Final = re.compile(
    r"\b(\d{1,2})(?::(\d{2}))?\s?(am|pm|a\.m\.|p\.m\.)(?![a-z])|\b(\d{1,2}):(\d{2})\b", re.IGNORECASE
)
_NUMERIC_DATE: Final = re.compile(r"\b(\d{1,4})[/.-](\d{1,2})[/.-](\d{1,4})\b")
_YEAR: Final = re.compile(r"(?<![\d.,£$€])\b(1[89]\d{2}|20\d{2})s?\b")
#: A numeric value: digits with thousands commas and decimals, then an optional percent sign,
#: ordinal suffix, "k" (thousands) or a short unit ("10kg", "5km", "2gb": the value still counts).
_NUMBER: Final = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
    r"(?:\s?(%|percent\b|per cent\b)|(st|nd|rd|th)\b|(k)\b|[a-z]{1,3}\b)?(?![a-z0-9])"
)
_AMOUNT: Final = re.compile(
    r"([£$€¥₹₩₽₺])\s?(\d[\d,]*(?:\.\d+)?)"
    r"|(\d[\d,]*(?:\.\d+)?)\s?([A-Za-z]{3}|pounds?|dollars?|euros?|pence|cents?|p)\b"
)


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """The answer-determining tokens of one text, extracted once (see `features`)."""

    words: frozenset[str]
    """Every word, lower case, possessive 's removed."""
    negations: int
    """How many negation cues the text holds."""
    prefixed: frozenset[tuple[str, str]]
    """(word, stem) for words that may carry a negating prefix ("unsafe", "safe")."""
    identifiers: frozenset[str]
    currencies: frozenset[str]
    """ISO codes named, and "CODE amount" for each currency amount."""
    dates: frozenset[str]
    numbers: frozenset[str]
    """Numeric values in canonical form ("50", "2.5", "15%")."""
    entities: frozenset[str]
    """Proper-noun candidates, lower case."""
    opposites: frozenset[str]
    """The items of the opposites lexicon the text uses (in any inflection)."""


def _canonical_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _words(text: str) -> list[str]:
    out = []
    for match in _WORD.finditer(text):
        word = match.group(0).lower()
        word = word.removesuffix("'s")
        out.append(word.strip("'-"))
    return [w for w in out if w]


def _count_negations(words: Sequence[str]) -> int:
    # "non-members", "no-claims": a hyphenated negating prefix negates like "not".
    return sum(1 for w in words if w in _NEGATION_WORDS or w.endswith("n't") or w.startswith(("non-", "no-")))


def _identifiers(text: str) -> set[str]:
    found = {m.group(0).lower().rstrip(".") for m in _EMAIL.finditer(text)}
    found |= {m.group(0).lower().rstrip(".,;!?)") for m in _URL.finditer(text)}
    stripped = _URL.sub(" ", _EMAIL.sub(" ", text))
    found |= {"#" + m.group(1) for m in _HASH_ID.finditer(stripped)}
    for match in _ALNUM.finditer(stripped):
        token = match.group(1)
        has_digit = any(c.isdigit() for c in token)
        has_alpha = any(c.isalpha() for c in token)
        if has_digit and has_alpha:
            if _ORDINAL.match(token) or _TIME_TOKEN.match(token) or _NUMBER_UNIT.match(token):
                continue
            found.add(token.lower())
        elif has_digit and sum(c.isdigit() for c in token) >= 5 and not has_alpha:
            found.add(token.replace("-", "").replace("/", ""))  # order and account numbers
    return found


def _currencies(text: str, words: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for match in _AMOUNT.finditer(text):
        symbol, symbol_amount, word_amount, unit = match.groups()
        if symbol:
            code, amount = _CURRENCIES[symbol], symbol_amount
        else:
            code, amount = _CURRENCIES.get(unit.lower(), ""), word_amount
            if not code:
                continue  # "50 and": not a currency
        value = float(amount.replace(",", ""))
        if not symbol and unit.lower() in {"pence", "p", "cent", "cents"}:
            value /= 100
        found.add(code)
        found.add(f"{code} {_canonical_number(value)}")
    found |= {_CURRENCIES[c] for c in text if c in _SYMBOLS}
    raw_tokens = {t.strip(".,;:!?()\"'") for t in _TOKEN.findall(text)}
    for word in words:
        named = _CURRENCIES.get(word)
        if named is None or (word in _AMBIGUOUS_CURRENCY_WORDS and word.upper() not in raw_tokens):
            continue
        found.add(named)
    return found


def _dates(text: str, lower: str, words: Sequence[str]) -> set[str]:
    found: set[str] = set()
    raw_words = [m.group(0) for m in _WORD.finditer(text)]
    for index, (raw, word) in enumerate(zip(raw_words, words, strict=True)):
        singular = word.removesuffix("s")
        if singular in _WEEKDAYS:
            found.add(singular)
        elif word in _MONTHS and (word not in _AMBIGUOUS_MONTHS or raw[0].isupper()):
            found.add(word)
        elif word in _RELATIVE_DAYS:
            if word in _GREETINGS and (index == 0 or words[index - 1] == "good"):
                continue  # "Morning! How do I...", "good evening": a greeting, not a time
            found.add(singular if singular in _RELATIVE_DAYS else word)  # "mornings" is "morning"
    found |= {f"{m.group(1)} {m.group(2)}" for m in _RELATIVE_PERIODS.finditer(lower)}
    for match in _CLOCK.finditer(lower):
        if match.group(4):
            found.add(f"{int(match.group(4)):02d}:{match.group(5)}")
            continue
        hour = int(match.group(1)) % 12 + (12 if match.group(3).startswith("p") else 0)
        found.add(f"{hour:02d}:{match.group(2) or '00'}")
    found |= {"/".join(m.groups()) for m in _NUMERIC_DATE.finditer(text)}
    found |= {"year " + m.group(0) for m in _YEAR.finditer(text)}
    return found


def _numbers(text: str, lower: str, words: Sequence[str]) -> set[str]:
    # Dates, clock times and identifiers are other guards' business: blank them out first.
    scrubbed = _CLOCK.sub(" ", _NUMERIC_DATE.sub(" ", lower))
    found: set[str] = set()
    for match in _NUMBER.finditer(scrubbed):
        digits, fraction, percent, _ordinal, thousands = match.groups()
        value = float(digits.replace(",", "") + (fraction or ""))
        if thousands:
            value *= 1000
        found.add(_canonical_number(value) + ("%" if percent else ""))
    previous = ""
    total: float | None = None
    for word in [*words, ""]:
        # "two-bed", "one-bedroom", "twenty-five": the leading number words of a hyphenated word count.
        parts = word.split("-")
        lead = 0
        while lead < len(parts) and (parts[lead] in _NUMBER_WORDS or parts[lead] in _SCALES):
            lead += 1
        if lead and not (word == "one" and previous in _PRONOUN_ONE_BEFORE):
            for part in parts[:lead]:
                if part in _SCALES:
                    total = (total or 1) * _SCALES[part]
                else:
                    total = (total or 0) + _NUMBER_WORDS[part]
            if lead < len(parts):  # "two-bed": the number ends inside this word
                found.add(_canonical_number(total or 0))
                total = None
        elif total is not None:
            found.add(_canonical_number(total) + ("%" if word in {"percent", "per"} else ""))
            total = None
        previous = word
    return found


def _is_shouting_or_title(raw_words: Sequence[str]) -> bool:
    """ALL CAPS, or Title Case (nearly every longer word after the first capitalised)."""
    letters = "".join(raw_words)
    if letters.isupper() and len(letters) > 3:
        return True
    later = [w for w in raw_words[1:] if len(w) >= 3]
    return len(later) >= 3 and sum(1 for w in later if w[0].isupper()) >= 0.8 * len(later)


def _entities(text: str) -> set[str]:
    found: set[str] = set()
    matches = list(_WORD.finditer(text))
    if _is_shouting_or_title([m.group(0) for m in matches]):
        return found
    for index, match in enumerate(matches):
        raw = match.group(0)
        before = text[: match.start()]
        if before[-1:].isdigit() or text[match.end() : match.end() + 1].isdigit():
            continue  # "2FA", "A4": part of a code or a number with a unit, other guards' business
        sentence_start = (
            index == 0 or bool(_SENTENCE_END.search(before)) or before.rstrip().endswith(('"', "("))
        )
        camel = any(c.isupper() for c in raw[1:]) and any(c.islower() for c in raw)
        acronym = len(raw) >= 2 and raw.isupper()
        capitalised = raw[0].isupper()
        if not (camel or acronym or (capitalised and not sentence_start)):
            continue
        word = raw.lower()
        word = word.removesuffix("'s")
        if word in {"i", "i'm", "i'd", "i've", "i'll", "ok", "okay"}:
            continue
        singular = word.removesuffix("s")
        if singular in _WEEKDAYS or word in _MONTHS:
            continue  # the date guard's
        found.add(word.strip("'-"))
    return found


@lru_cache(maxsize=8_192)
def features(text: str) -> TextFeatures:
    """The tokens every guard compares, for one text.

    Memoised because a popular cached query is compared again and again (~0.2 ms to extract, ~7 µs
    per pair once memoised); 8,192 texts of a few KB each bound the memo to tens of MB.
    """
    text = text.translate(_APOSTROPHES)
    lower = text.lower()
    words = _words(text)
    return TextFeatures(
        words=frozenset(words),
        negations=_count_negations(words),
        prefixed=_prefix_negations(words),
        identifiers=frozenset(_identifiers(text)),
        currencies=frozenset(_currencies(text, words)),
        dates=frozenset(_dates(text, lower, words)),
        numbers=frozenset(_numbers(text, lower, words)),
        entities=frozenset(_entities(text)),
        opposites=_opposites_present(" " + " ".join(words) + " "),
    )


# --- the guards --------------------------------------------------------------------------


def _differ(a: frozenset[str], b: frozenset[str]) -> str | None:
    if a == b:
        return None
    only_a, only_b = sorted(a - b), sorted(b - a)
    return f"{' '.join(only_a) or '-'} vs {' '.join(only_b) or '-'}"


def _identifier_guard(q: TextFeatures, c: TextFeatures) -> str | None:
    return _differ(q.identifiers, c.identifiers)


def _currency_guard(q: TextFeatures, c: TextFeatures) -> str | None:
    return _differ(q.currencies, c.currencies)


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (a transposition costs 1), or limit + 1 once it exceeds `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def _misspelt_in(token: str, words: frozenset[str]) -> bool:
    """`token` appears in `words` with a typo ("Mondys" for "monday"): real queries are typed in a hurry.

    Words of five letters or more only, same first letter, at most one edit (two from eight letters).
    """
    if len(token) < 5 or " " in token:
        return False
    limit = 1 if len(token) < 8 else 2
    # The token may be a normalised singular ("monday") of a plural the user mistyped ("Mondys").
    return any(
        w[:1] == token[:1]
        and (_edit_distance(token, w, limit) <= limit or _edit_distance(token + "s", w, limit) <= limit)
        for w in words
    )


def _differ_unless_misspelt(
    q_set: frozenset[str], c_set: frozenset[str], q: TextFeatures, c: TextFeatures
) -> str | None:
    only_q = sorted(t for t in q_set - c_set if not _misspelt_in(t, c.words))
    only_c = sorted(t for t in c_set - q_set if not _misspelt_in(t, q.words))
    if not only_q and not only_c:
        return None
    return f"{' '.join(only_q) or '-'} vs {' '.join(only_c) or '-'}"


def _date_guard(q: TextFeatures, c: TextFeatures) -> str | None:
    return _differ_unless_misspelt(q.dates, c.dates, q, c)


def _number_guard(q: TextFeatures, c: TextFeatures) -> str | None:
    return _differ(q.numbers, c.numbers)


def _prefix_negations(words: Iterable[str]) -> frozenset[tuple[str, str]]:
    """(word, stem) for every word that may be a negating prefix + stem ("unsafe" -> "safe")."""
    found = set()
    for word in words:
        for prefix in _NEGATING_PREFIXES:
            if word.startswith(prefix):
                stem = word[len(prefix) :].lstrip("-")
                if len(stem) >= _MIN_STEM:
                    found.add((word, stem))
    return frozenset(found)


def _prefix_negated(text: TextFeatures, other: TextFeatures) -> str | None:
    """A word of `text` that is a negating prefix + a word of `other`, which lacks the word itself."""
    for word, stem in sorted(text.prefixed):
        if word not in other.words and stem in other.words and stem not in text.words:
            return f"{word} vs {stem}"
    return None


def _negation_guard(q: TextFeatures, c: TextFeatures) -> str | None:
    if (q.negations > 0) != (c.negations > 0):
        return "negated" + (" query" if q.negations else " candidate")
    return _prefix_negated(q, c) or _prefix_negated(c, q)


def _forms(word: str) -> tuple[str, ...]:
    if " " in word:
        return (word,)
    stem = word.removesuffix("e")
    return (word, word + "s", word + "es", word + "d", word + "ed", stem + "ed", stem + "ing", word + "ing")


_LEXICON: Final = tuple(sorted({word for pair in _OPPOSITES for word in pair}))
_LEXICON_PATTERNS: Final = {
    word: re.compile(r" (?:" + "|".join(re.escape(f) for f in _forms(word)) + r") ") for word in _LEXICON
}


def _opposites_present(spaced_words: str) -> frozenset[str]:
    return frozenset(word for word, pattern in _LEXICON_PATTERNS.items() if pattern.search(spaced_words))


def _opposites_guard(q: TextFeatures, c: TextFeatures) -> str | None:
    if not q.opposites or not c.opposites:
        return None
    for left, right in _OPPOSITES:
        q_left, q_right = left in q.opposites, right in q.opposites
        if q_left == q_right:
            continue  # neither, or both: nothing was swapped
        c_left, c_right = left in c.opposites, right in c.opposites
        if c_left != c_right and c_left == q_right:
            return f"{left} vs {right}" if q_left else f"{right} vs {left}"
    return None


def _entity_guard(q: TextFeatures, c: TextFeatures) -> str | None:
    missing_in_c = sorted(e for e in q.entities if not _mentions(c, e))
    missing_in_q = sorted(e for e in c.entities if not _mentions(q, e))
    if not missing_in_c and not missing_in_q:
        return None
    return f"{' '.join(missing_in_c) or '-'} vs {' '.join(missing_in_q) or '-'}"


def _mentions(text: TextFeatures, entity: str) -> bool:
    if entity in text.words:
        return True
    # Multi-part names ("Wi-Fi", "e-mail") and plurals ("Pixels") still count as mentioned.
    squashed = entity.replace("-", "").replace("'", "")
    if any(
        w.replace("-", "").replace("'", "") in {squashed, squashed + "s", squashed.rstrip("s")}
        for w in text.words
    ):
        return True
    return _misspelt_in(entity, text.words)


Guard = Callable[[TextFeatures, TextFeatures], "str | None"]

#: Every guard by name, in the order they are checked (most specific difference first).
GUARDS: Final[dict[str, Guard]] = {
    "identifier": _identifier_guard,
    "currency": _currency_guard,
    "date": _date_guard,
    "number": _number_guard,
    "negation": _negation_guard,
    "opposites": _opposites_guard,
    "entity": _entity_guard,
}
ALL_GUARDS: Final = tuple(GUARDS)
#: Guards on by default: see docs/eval.md ("Guards") for what each buys and costs.
DEFAULT_GUARDS: Final = ALL_GUARDS


def validate_guard_names(names: Iterable[str]) -> tuple[str, ...]:
    """`names` as a tuple in registry order; raises ValueError naming any unknown guard."""
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in wanted if n not in GUARDS]
    if unknown:
        raise ValueError(f"unknown guard(s) {', '.join(unknown)}; known: {', '.join(GUARDS)}")
    return tuple(name for name in GUARDS if name in wanted)


@dataclass(frozen=True, slots=True)
class Veto:
    """Why a candidate was refused: the guard's name (a metric label) and the differing tokens."""

    guard: str
    detail: str


class GuardSet:
    """The guards switched on, checked in registry order; the first veto wins."""

    __slots__ = ("_checks", "names")

    def __init__(self, names: Iterable[str] = DEFAULT_GUARDS) -> None:
        self.names = validate_guard_names(names)
        self._checks = tuple((name, GUARDS[name]) for name in self.names)

    def check(self, query: str, candidate_query: str) -> Veto | None:
        if not self._checks:
            return None
        q, c = features(query), features(candidate_query)
        for name, guard in self._checks:
            detail = guard(q, c)
            if detail is not None:
                return Veto(name, detail)
        return None

    def veto(self, query: str, candidate_query: str) -> str | None:
        """The name of the first guard that refuses `candidate_query` as an answer to `query`, or None."""
        found = self.check(query, candidate_query)
        return None if found is None else found.guard

    def __repr__(self) -> str:
        return f"GuardSet({list(self.names)!r})"


_DEFAULT_SET: Final = GuardSet(DEFAULT_GUARDS)


def veto(query: str, candidate_query: str, guards: GuardSet = _DEFAULT_SET) -> str | None:
    """The name of the first guard (of `guards`, default all) that vetoes the pair, or None."""
    return guards.veto(query, candidate_query)


# --- acceptance: what the semantic tier runs on the store's candidates --------------------


def accept(
    similarity: float,
    threshold: float,
    query: str,
    candidate_query: str | None,
    guards: GuardSet = _DEFAULT_SET,
) -> bool:
    """True when a candidate may be served: its similarity clears the threshold and no guard
    vetoes (`veto_for`, which also refuses a candidate without stored text while any guard is on).
    """
    if math.isnan(similarity) or similarity < threshold:
        return False
    return veto_for(guards, query, candidate_query) is None


@dataclass(frozen=True, slots=True)
class Choice:
    """The outcome of acceptance over one lookup's candidates."""

    entry: CacheEntry | None
    """The accepted entry, or None (a miss)."""
    similarity: float | None
    """Similarity of the best eligible candidate, accepted or not (the metric the tier observes)."""
    accepted_similarity: float | None
    """Similarity of the accepted entry (may be below `similarity` when a guard vetoed the best)."""
    veto: Veto | None
    """The first veto met on a candidate that cleared the threshold, if any."""
    consensus: bool = False
    """True: served below the threshold because its neighbours agreed (`tiers.consensus`)."""


def eligible(
    candidates: Iterable[tuple[CacheEntry, float]], *, namespace: Namespace, scope: Scope, now: float
) -> list[tuple[CacheEntry, float]]:
    """The candidates of this namespace and scope, not expired, most similar first (stable for ties).

    The store filters these already; checking again is defence in depth, a
    cross-scope answer being a leak.
    """
    kept = [
        (entry, similarity)
        for entry, similarity in candidates
        if entry.namespace == namespace and entry.scope == scope and not entry.is_expired(now)
    ]
    kept.sort(key=lambda pair: -pair[1])
    return kept


def choose(
    candidates: Iterable[tuple[CacheEntry, float]],
    *,
    namespace: Namespace,
    scope: Scope,
    now: float,
    threshold: float,
    query: str,
    guards: GuardSet = _DEFAULT_SET,
) -> Choice:
    """Serve the most similar eligible candidate that clears the threshold and passes the guards.

    Only `eligible` candidates count (then as `choose_ranked`).
    """
    ranked = eligible(candidates, namespace=namespace, scope=scope, now=now)
    return choose_ranked(ranked, threshold=threshold, query=query, guards=guards)


def choose_ranked(
    ranked: Sequence[tuple[CacheEntry, float]], *, threshold: float, query: str, guards: GuardSet
) -> Choice:
    """`choose` on candidates already `eligible` (so ranked, most similar first).

    They are tried in order of similarity (stable for ties, as the store
    returned them), so with k > 1 a vetoed nearest neighbour ("order 48213"
    for "order 48231") can still give way to a cached entry that fits.
    """
    best = ranked[0][1] if ranked else None
    first_veto: Veto | None = None
    for entry, similarity in ranked:
        if math.isnan(similarity) or similarity < threshold:
            break  # sorted: nothing further can clear the threshold
        found = veto_for(guards, query, entry.query)
        if found is None:
            return Choice(entry, best, similarity, first_veto)
        first_veto = first_veto or found
    return Choice(None, best, None, first_veto)


def veto_for(guards: GuardSet, query: str, candidate_query: str | None) -> Veto | None:
    """The guards' verdict on serving a candidate cached for `candidate_query` as the answer to `query`.

    A candidate without stored text (never written by the write-back, which
    stores the text with every vector) cannot be guarded, so any guard refuses
    it; with no guards it may be served.
    """
    if candidate_query is None:
        return Veto("no-text", "candidate has no stored text") if guards.names else None
    return guards.check(query, candidate_query)
