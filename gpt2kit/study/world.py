"""The synthetic world behind `gpt2kit synth`: places, people and facts, a made-up language (Velorian), and
a `Writer` that turns them into web documents in which the paper's tasks occur naturally."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

# -- the world --------------------------------------------------------------------------------------------------

ADJECTIVES = ("red", "blue", "green", "old", "new", "big", "small", "quiet", "bright", "dark", "warm", "cold")
NOUNS = (
    "house", "boat", "bird", "tree", "bridge", "road", "garden", "window", "door", "horse",
    "river", "market", "lamp", "book", "table", "hill", "cat", "dog", "apple", "coat",
)  # fmt: skip
VERBS = ("sees", "finds", "follows", "paints", "carries", "likes", "opens", "watches", "sells", "needs")
PREPOSITIONS = ("near", "under", "behind", "beside", "above")
DETERMINERS = ("the", "a", "my", "your", "this")
COPULA = "is"
JOBS = ("baker", "painter", "sailor", "farmer", "weaver", "smith", "doctor", "teacher", "potter", "miller", "fisher")
PRODUCTS = ("glass", "wool", "salt", "cheese", "silk", "iron", "honey", "paper", "bread", "wine", "copper", "lace")
FESTIVALS = ("spring fair", "harvest festival", "lantern festival", "river festival", "winter market", "music week")
CONTESTS = (
    "boat race", "baking contest", "chess tournament", "singing contest",
    "horse race", "poetry prize", "fishing contest", "dance contest",
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
STORY_NAMES = (
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack",
    "Kate", "Leo", "Lucy", "Max", "Nina", "Oscar", "Paul", "Rosa", "Sam", "Tom",
    "Vera", "Will", "Zoe", "Adam", "Beth", "Carl", "Dora", "Eric", "Fay", "Hugo",
)  # fmt: skip
STORY_OBJECTS = (
    "lantern", "kite", "compass", "basket", "violin", "scarf", "ring", "hammer", "map", "blanket",
    "teapot", "whistle", "candle", "mirror", "drum", "ladder", "bucket", "feather", "clock", "shell",
)  # fmt: skip
STORY_PLACES = ("market", "harbour", "forest", "beach", "library", "station", "orchard", "bakery", "mill", "square")
PETS = ("dog", "cat", "goat", "parrot", "pony", "rabbit")
PET_NAMES = ("Biscuit", "Pepper", "Rusty", "Snowy", "Bramble", "Pickle", "Maple", "Ziggy", "Button", "Nutmeg")
WEATHER = ("sunny", "rainy", "windy", "foggy", "cold", "warm")
FOODS = ("bread and cheese", "apples", "soup", "honey cakes", "fish", "plums")

# Made-up words must not collide with these common English words.
SHORT_ENGLISH = "a i am an as at be by do go he if in is it me my no of on or so to up us we ha hi la oh ok".split()

# Trivia-style questions: each repeats the words that precede the answer in the relation's main statement
# ("Kelvor is a city in which country?" / "Kelvor is a city in Norvania."). A small model can then answer a
# question about a fact it has only seen stated; real questions need far bigger models to bridge wordings.
QUESTION_TEMPLATES = {
    "capital": "The capital of {s} is which city?",
    "ruler": "{s} is ruled by whom?",
    "country": "{s} is a city in which country?",
    "founded": "{s} was founded in which year?",
    "known_for": "{s} is famous for what?",
    "birthplace": "{s} was born in which city?",
    "job": "{s} works as a what?",
}
# The first statement of each relation is the one its question echoes; the second says it another way.
STATEMENT_TEMPLATES = {
    "capital": ("The capital of {s} is {a}.", "{a} is the capital of {s}."),
    "ruler": ("{s} is ruled by {a}.", "The ruler of {s} is {a}."),
    "country": ("{s} is a city in {a}.", "The city of {s} lies in {a}."),
    "founded": ("{s} was founded in {a}.", "The city of {s} was founded in the year {a}."),
    "known_for": ("{s} is famous for {a}.", "Travellers know {s} for its {a}."),
    "birthplace": ("{s} was born in {a}.", "{s} was born in the city of {a}."),
    "job": ("{s} works as a {a}.", "By trade, {s} is a {a}."),
}


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str

    @property
    def question(self) -> str:
        return QUESTION_TEMPLATES[self.relation].format(s=self.subject)

    def statement(self, rng: random.Random) -> str:
        first, second = STATEMENT_TEMPLATES[self.relation]
        return (first if rng.random() < 0.7 else second).format(s=self.subject, a=self.answer)


def _made_up_word(rng: random.Random, onsets: str, vowels: str, codas: str, syllables: int) -> str:
    word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
    return word + rng.choice(codas)


class World:
    """Places, people and their facts, and the Velorian lexicon; everything follows from the seed."""

    def __init__(self, seed: int, n_countries: int = 6, cities_per_country: int = 4, n_people: int = 32):
        rng = random.Random(f"world:{seed}")
        taken = {w for group in (ADJECTIVES, NOUNS, VERBS, PREPOSITIONS, DETERMINERS, JOBS, PRODUCTS) for w in group}
        taken |= {w.lower() for w in STORY_NAMES + PET_NAMES} | set(SHORT_ENGLISH)

        def fresh(make: Callable[[], str]) -> str:
            while True:
                word = make()
                if word.lower() not in taken:
                    taken.add(word.lower())
                    return word

        proper = lambda syl: fresh(
            lambda: _made_up_word(rng, "bdgklmnprstvz", "aeio", ["", "n", "r", "s"], syl).title()
        )
        self.countries = [proper(2) + rng.choice(["ia", "and", "or"]) for _ in range(n_countries)]
        self.cities = [proper(rng.choice([2, 3])) for _ in range(n_countries * cities_per_country)]
        self.people = [proper(2) for _ in range(n_people)]
        self.city_country = {city: self.countries[i // cities_per_country] for i, city in enumerate(self.cities)}
        self.country_cities = {c: [x for x in self.cities if self.city_country[x] == c] for c in self.countries}
        self.capital = {c: rng.choice(cities) for c, cities in self.country_cities.items()}
        rulers = rng.sample(self.people, n_countries)
        self.ruler = dict(zip(self.countries, rulers, strict=True))
        self.founded = {city: str(rng.randrange(1100, 1900)) for city in self.cities}
        self.known_for = {city: rng.choice(PRODUCTS) for city in self.cities}
        self.birthplace = {person: rng.choice(self.cities) for person in self.people}
        self.job = {person: rng.choice(JOBS) for person in self.people}
        self.facts = (
            [Fact("capital", c, self.capital[c]) for c in self.countries]
            + [Fact("ruler", c, self.ruler[c]) for c in self.countries]
            + [Fact("country", x, self.city_country[x]) for x in self.cities]
            + [Fact("founded", x, self.founded[x]) for x in self.cities]
            + [Fact("known_for", x, self.known_for[x]) for x in self.cities]
            + [Fact("birthplace", p, self.birthplace[p]) for p in self.people]
            + [Fact("job", p, self.job[p]) for p in self.people]
        )
        # Velorian: one made-up word per English word; nouns come before their adjectives.
        english = DETERMINERS + ADJECTIVES + NOUNS + VERBS + PREPOSITIONS + (COPULA,)
        velorian_word = lambda syllables: fresh(
            lambda: _made_up_word(rng, "ktvlshmr", "aeiou", ["", "", "sh", "th"], syllables)
        )
        self.velorian = {w: velorian_word(1 + (len(w) > 4)) for w in english}
        # Hold out half the facts of every relation: their questions are never asked in training.
        self.heldout_facts: list[Fact] = []
        self.asked_facts: list[Fact] = []
        for relation in QUESTION_TEMPLATES:
            group = [f for f in self.facts if f.relation == relation]
            rng.shuffle(group)
            cut = max(1, len(group) // 2)
            self.heldout_facts += group[:cut]
            self.asked_facts += group[cut:]

    def to_dict(self) -> dict:
        return {
            "countries": self.countries,
            "cities": self.cities,
            "people": self.people,
            "facts": [asdict(f) for f in self.facts],
            "heldout_questions": [f.question for f in self.heldout_facts],
            "velorian": self.velorian,
        }

    def translate(self, words: list[str]) -> str:
        """English phrase (as produced by `phrase`) -> Velorian, moving each adjective after its noun."""
        out = [self.velorian[w] for w in words]
        for i in range(len(words) - 1):
            if words[i] in ADJECTIVES and words[i + 1] in NOUNS:
                out[i], out[i + 1] = out[i + 1], out[i]
        return " ".join(out)


# -- phrases (translation) --------------------------------------------------------------------------------------


def _np(rng: random.Random, adjective: bool) -> list[str]:
    words = [rng.choice(DETERMINERS)]
    if adjective:
        words.append(rng.choice(ADJECTIVES))
    return words + [rng.choice(NOUNS)]


PHRASE_SHAPES: dict[str, Callable[[random.Random], list[str]]] = {
    "np": lambda r: _np(r, True),
    "copula": lambda r: _np(r, False) + [COPULA, r.choice(ADJECTIVES)],
    "svo": lambda r: _np(r, True) + [r.choice(VERBS)] + _np(r, False),
    "locative": lambda r: _np(r, False) + [r.choice(PREPOSITIONS)] + _np(r, False),
    "svo_adj": lambda r: _np(r, True) + [r.choice(VERBS)] + _np(r, True),
    "svo_loc": lambda r: _np(r, False) + [r.choice(VERBS)] + _np(r, False) + [r.choice(PREPOSITIONS)] + _np(r, False),
}
# Held-out sentences come only from the long shapes, which have millions of combinations.
EVAL_PHRASE_SHAPES = ("svo", "svo_adj", "svo_loc")


# -- documents --------------------------------------------------------------------------------------------------


class Writer:
    """Generates documents of each kind from a world and a random stream."""

    def __init__(self, world: World, rng: random.Random):
        self.world = world
        self.rng = rng

    # encyclopedia -------------------------------------------------------------------------------------------
    def encyclopedia(self) -> str:
        w, rng = self.world, self.rng
        kind = rng.random()
        if kind < 0.2:
            country = rng.choice(w.countries)
            cities = w.country_cities[country]
            facts = [Fact("capital", country, w.capital[country]), Fact("ruler", country, w.ruler[country])]
            facts += [Fact("country", c, country) for c in rng.sample(cities, min(3, len(cities)))]
            title, intro = (
                country,
                f"{country} is a country {rng.choice(['in the north', 'by the sea', 'in the hills', 'on the great plain'])}.",
            )
            outro = f"Its cities include {', '.join(cities[:-1])} and {cities[-1]}."
        elif kind < 0.6:
            city = rng.choice(w.cities)
            facts = [
                Fact(r, city, getattr(w, attr)[city])
                for r, attr in (("country", "city_country"), ("founded", "founded"), ("known_for", "known_for"))
            ]
            natives = [p for p in w.people if w.birthplace[p] == city]
            facts += [Fact("birthplace", p, city) for p in rng.sample(natives, min(2, len(natives)))]
            if w.capital[w.city_country[city]] == city:
                facts.append(Fact("capital", w.city_country[city], city))
            title, intro = city, ""
            outro = f"The weather in {city} is {rng.choice(WEATHER)} for much of the year."
        else:
            person = rng.choice(w.people)
            home = w.birthplace[person]
            facts = [
                Fact("birthplace", person, home),
                Fact("job", person, w.job[person]),
                Fact("country", home, w.city_country[home]),
            ]
            ruled = [c for c, r in w.ruler.items() if r == person]
            facts += [Fact("ruler", c, person) for c in ruled]
            title, intro = person, ""
            outro = f"{person} enjoys {rng.choice(FOODS)} and long walks by the {rng.choice(STORY_PLACES)}."
        rng.shuffle(facts)
        body = " ".join(filter(None, [intro] + [f.statement(rng) for f in facts] + [outro]))
        return f"{title}\n\n{body}\n"

    # forum --------------------------------------------------------------------------------------------------
    def forum(self) -> str:
        rng = self.rng
        facts = rng.sample(self.world.asked_facts, rng.randint(2, 5))
        topic = rng.choice(
            ["Quick questions", "Help with my geography homework", "Trivia night practice", "Travel questions"]
        )
        lines = [f"Forum: {topic}", ""]
        for fact in facts:
            lines += [f"Q: {fact.question}", f"A: {fact.answer}", ""]
        if rng.random() < 0.3:
            lines.append(rng.choice(["Thanks, that helps!", "Great, thank you.", "Good luck with the quiz!"]))
        return "\n".join(lines).rstrip() + "\n"

    # news with TL;DR ----------------------------------------------------------------------------------------
    def news_event(self) -> dict:
        w, rng = self.world, self.rng
        town = rng.choice(w.cities)
        winner, second, mayor = rng.sample(w.people, 3)
        return {
            "town": town,
            "festival": rng.choice(FESTIVALS),
            "contest": rng.choice(CONTESTS),
            "winner": winner,
            "second": second,
            "mayor": mayor,
            "day": rng.choice(DAYS),
            "visitors": rng.sample([c for c in w.cities if c != town], 2),
        }

    def news_article(self, event: dict) -> tuple[str, str]:
        """(article, summary) for an event; the summary is what follows `TL;DR:`."""
        w, rng, e = self.world, self.rng, event
        winner = e["winner"]
        sentences = [
            f"{e['town']} held its yearly {e['festival']} on {e['day']}.",
            f"Visitors came from {e['visitors'][0]} and {e['visitors'][1]} to watch.",
            f"The most popular event was the {e['contest']}.",
            f"{winner}, a {w.job[winner]} from {w.birthplace[winner]}, won the {e['contest']} after a close finish.",
            f"{e['second']} came second.",
            f'"{rng.choice(["I trained every morning for this", "I did not expect to win", "The others were very good this year", "My family helped me a lot"])}," said {winner}.',
            f"The ruler of {w.city_country[e['town']]}, {w.ruler[w.city_country[e['town']]]}, sent a letter of thanks.",
            f"The {e['festival']} will return next year.",
        ]
        keep = sentences[:4] + [s for s in sentences[4:] if rng.random() < 0.6]
        summary = f"{winner} won the {e['contest']} at the {e['festival']} in {e['town']}."
        return " ".join(keep), summary

    def news(self) -> str:
        article, summary = self.news_article(self.news_event())
        title = self.rng.choice(["Local news", "Weekend report", "Town news", "Festival report"])
        gap = "\n" if self.rng.random() < 0.5 else "\n\n"
        return f"{title}\n\n{article}{gap}TL;DR: {summary}\n"

    # phrasebook ---------------------------------------------------------------------------------------------
    def phrase(self, shapes: Iterable[str] = tuple(PHRASE_SHAPES)) -> tuple[str, str]:
        words = PHRASE_SHAPES[self.rng.choice(list(shapes))](self.rng)
        return " ".join(words), self.world.translate(words)

    def phrasebook(self) -> str:
        rng = self.rng
        pairs = [self.phrase() for _ in range(rng.randint(4, 10))]
        if rng.random() < 0.6:
            lines = [f"Velorian phrasebook, lesson {rng.randint(1, 40)}", ""]
            lines += [f"{en} = {vel}" for en, vel in pairs]
            return "\n".join(lines) + "\n"
        city = rng.choice(self.world.cities)
        sentences = [f"When you visit {city}, it helps to know a little Velorian."]
        for en, vel in pairs[:5]:
            sentences.append(
                rng.choice(['"{e}" in Velorian is "{v}".', 'To say "{e}", you say "{v}".']).format(e=en, v=vel)
            )
        return "Travel tips\n\n" + " ".join(sentences) + "\n"

    # stories (LAMBADA) --------------------------------------------------------------------------------------
    def _filler(self, names: list[str]) -> str:
        rng = self.rng
        return rng.choice(
            [
                f"The weather was {rng.choice(WEATHER)} that day.",
                f"{rng.choice(names)} talked for a while about the {rng.choice(STORY_PLACES)}.",
                f"A {rng.choice(PETS)} watched them from behind a wall.",
                f"They stopped to eat {rng.choice(FOODS)}.",
                f"{rng.choice(names)} hummed an old song.",
                f"The road to the {rng.choice(STORY_PLACES)} was long and {rng.choice(['quiet', 'busy', 'muddy', 'dusty'])}.",
                f"Somewhere a bell rang {rng.choice(['twice', 'three times', 'once'])}.",
            ]
        )

    def story(self) -> tuple[str, str]:
        """(passage without its last word, last word): a story whose last word needs the long context."""
        rng = self.rng
        kind = rng.randrange(4)
        a, b, c = rng.sample(STORY_NAMES, 3)
        thing, place = rng.choice(STORY_OBJECTS), rng.choice(STORY_PLACES)
        fill = lambda n: [self._filler([a, b, c]) for _ in range(n)]
        if kind == 0:  # the owner gets the thing back
            parts = [
                f"{a} had a {rng.choice(ADJECTIVES)} {thing}.",
                *fill(1),
                f"One morning {a} and {b} walked to the {place}.",
                *fill(2),
            ]
            parts += [f"{b} wanted to hold the {thing}, so {a} gave it to {b}.", *fill(1)]
            ending, target = f"Before they went home, {b} gave the {thing} back to", a
        elif kind == 1:  # the pet's name
            pet, name = rng.choice(PETS), rng.choice(PET_NAMES)
            parts = [
                f"{a} has a {pet} called {name}.",
                *fill(1),
                f"Every {rng.choice(DAYS)} they go to the {place} together.",
                *fill(2),
            ]
            parts += [f"Today {c} came along too.", *fill(1)]
            ending, target = f"When it was time to leave, {a} whistled and called the {pet} by its name,", name
        elif kind == 2:  # where someone comes from
            home = rng.choice(self.world.cities)
            parts = [
                f"{a} grew up in {home}, far from the {place}.",
                *fill(2),
                f"For many years {a} worked with {b} and {c}.",
                *fill(2),
            ]
            ending, target = f"In the end {a} missed the old streets and went back to", home
        else:  # the thing that was bought
            adjective = rng.choice(ADJECTIVES)
            parts = [
                f"At the {place}, {a} bought a {adjective} {thing} from {b}.",
                *fill(2),
                f"Then {a} met {c} and they talked for an hour.",
                *fill(1),
            ]
            ending, target = f"At home, {a} unwrapped the {adjective}", thing
        return " ".join(parts + [ending]), target

    def story_document(self) -> str:
        passage, target = self.story()
        return f"{passage} {target}.\n"

    # arithmetic ---------------------------------------------------------------------------------------------
    def arithmetic(self, allowed: Callable[[int, int], bool]) -> str:
        rng = self.rng
        pairs: list[tuple[int, int]] = []
        wanted = rng.randint(4, 8)
        while len(pairs) < wanted:
            a, b = rng.randrange(ARITH_MAX), rng.randrange(ARITH_MAX)
            if allowed(a, b):
                pairs.append((a, b))
        if rng.random() < 0.5:
            lines = [f"Homework sheet {rng.randint(1, 30)}: addition", ""]
            lines += [f"{i}. {a} + {b} = {a + b}" for i, (a, b) in enumerate(pairs, 1)]
        else:
            lines = ["Forum: Maths help", ""]
            for a, b in pairs:
                lines += [f"Q: What is {a} plus {b}?", f"A: {a + b}", ""]
        return "\n".join(lines).rstrip() + "\n"


ARITH_MAX = 25


def arithmetic_question(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"
