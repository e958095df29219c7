"""Small caption grammars for the synthetic scenes, one per XTD10 language.

A scene caption mentions shapes (:class:`Mention`: shape, colour, optional size and
position). Every language turns the same mentions into a caption with its own words,
word order and agreement, using one of several paraphrase templates:

* en: article a/an chosen by the next word; "there is/are" agrees in number.
* de: indefinite article + mixed adjective declension in nominative/accusative/dative,
  by gender (ein großer roter Kreis / einen großen roten Kreis / einer großen roten Raute).
* fr/es/it: gender agreement of article and adjectives; colour after the noun; size before
  it (fr, it) or after the colour (es); Italian un/uno/una/un' by the next word.
* pl/ru: gender x case (nominative, accusative, instrumental) adjective endings per stem class.
* tr: adjective + "bir" + noun; locative suffix -da/-de/-ta/-te and comitative -(y)la/-(y)le
  by vowel harmony and consonant assimilation.
* zh: measure words per noun (一个, 一颗), 的; ja: の/に/と/が particles, あり/あります;
  ko: 이/가, 을/를, 과/와 chosen by the final consonant (batchim) of the preceding syllable.

Templates are ``(pattern, case)`` pairs. In a pattern ``{list}`` is the list of noun phrases
in that grammatical case (or ``{clauses}``: one existential clause per mention),
``{singular|plural}`` agrees with the number of mentions, and in Korean ``{이/가}`` is a
particle whose first form follows a consonant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional, Sequence

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")

_NUMBER = re.compile(r"\{([^{}|]*)\|([^{}|]*)\}")


@dataclass(frozen=True)
class Mention:
    """One shape as a caption mentions it. ``size``/``position`` are None when not mentioned."""

    shape: str
    colour: str
    size: Optional[str] = None
    position: Optional[str] = None


class Grammar:
    """Base grammar: subclasses give ``noun_phrase`` and their lexicon/templates as class data."""

    code = ""
    templates: tuple[tuple[str, str], ...] = ()
    conjunction = "and"
    separator = ", "
    cased_script = True

    def noun_phrase(self, m: Mention, case: str) -> str:
        """The noun phrase for ``m`` in grammatical ``case`` (position phrase included)."""
        raise NotImplementedError

    def join(self, phrases: list[str], case: str) -> str:
        """``A``, ``A and B``, ``A, B and C`` with this language's conjunction."""
        if len(phrases) == 1:
            return phrases[0]
        return self.separator.join(phrases[:-1]) + f" {self.conjunction} " + phrases[-1]

    def clauses(self, mentions: Sequence[Mention]) -> str:
        """One existential clause per mention (only languages with a ``clauses`` template)."""
        raise NotImplementedError(f"{self.code} has no clause templates")

    def capitalise(self, text: str) -> str:
        return text[:1].upper() + text[1:] if self.cased_script else text

    def finish(self, text: str) -> str:
        """Language-specific last touches (particles); capitalises cased scripts."""
        return self.capitalise(text)

    def render(self, mentions: Sequence[Mention], template: int) -> str:
        """Caption for ``mentions`` (at least one) with paraphrase ``template`` (index)."""
        if not mentions:
            raise ValueError("a caption needs at least one mention")
        pattern, case = self.templates[template]
        if case == "clauses":
            text = pattern.replace("{clauses}", self.clauses(mentions))
        else:
            text = pattern.replace("{list}", self.join([self.noun_phrase(m, case) for m in mentions], case))
        text = _NUMBER.sub(lambda g: g.group(1) if len(mentions) == 1 else g.group(2), text)
        return self.finish(text)


# --------------------------------------------------------------------------- Germanic
class English(Grammar):
    code = "en"
    templates = (("{list}", "np"), ("a picture of {list}", "np"), ("there {is|are} {list}", "np"),
                 ("an image showing {list}", "np"))
    positions = {"left": "on the left", "right": "on the right", "top": "at the top",
                 "bottom": "at the bottom", "centre": "in the middle"}

    def noun_phrase(self, m: Mention, case: str) -> str:
        words = [w for w in (m.size, m.colour, m.shape) if w]  # English words are the concept names
        article = "an" if words[0][0] in "aeiou" else "a"
        phrase = " ".join([article, *words])
        return f"{phrase} {self.positions[m.position]}" if m.position else phrase


class German(Grammar):
    code = "de"
    conjunction = "und"
    templates = (("{list}", "nom"), ("ein Bild mit {list}", "dat"), ("das Bild zeigt {list}", "acc"),
                 ("zu sehen {ist|sind} {list}", "nom"))
    nouns = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
             "star": ("Stern", "m"), "ring": ("Ring", "m"), "diamond": ("Raute", "f")}
    stems = {"red": "rot", "orange": "orangefarben", "yellow": "gelb", "green": "grün", "blue": "blau",
             "purple": "violett", "black": "schwarz", "white": "weiß", "small": "klein", "large": "groß"}
    positions = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "in der Mitte"}
    # indefinite article and adjective ending after it ("mixed" declension), by (case, gender)
    articles = {("nom", "m"): "ein", ("nom", "f"): "eine", ("nom", "n"): "ein",
                ("acc", "m"): "einen", ("acc", "f"): "eine", ("acc", "n"): "ein",
                ("dat", "m"): "einem", ("dat", "f"): "einer", ("dat", "n"): "einem"}
    endings = {("nom", "m"): "er", ("nom", "f"): "e", ("nom", "n"): "es",
               ("acc", "m"): "en", ("acc", "f"): "e", ("acc", "n"): "es",
               ("dat", "m"): "en", ("dat", "f"): "en", ("dat", "n"): "en"}

    def noun_phrase(self, m: Mention, case: str) -> str:
        noun, gender = self.nouns[m.shape]
        adjectives = [self.stems[a] + self.endings[case, gender] for a in (m.size, m.colour) if a]
        phrase = " ".join([self.articles[case, gender], *adjectives, noun])
        return f"{phrase} {self.positions[m.position]}" if m.position else phrase


# --------------------------------------------------------------------------- Romance
class Romance(Grammar):
    """Article + (size) + noun + colour (+ size): forms per gender (masculine, feminine)."""

    articles = {"m": "", "f": ""}
    nouns: dict[str, tuple[str, str]] = {}
    adjectives: dict[str, tuple[str, str]] = {}
    positions: dict[str, str] = {}
    size_before_noun = True

    def article(self, gender: str, next_word: str) -> str:
        return self.articles[gender] + " "

    def noun_phrase(self, m: Mention, case: str) -> str:
        noun, gender = self.nouns[m.shape]
        g = 0 if gender == "m" else 1
        size = self.adjectives[m.size][g] if m.size else None
        colour = self.adjectives[m.colour][g]
        if self.size_before_noun:
            words = [w for w in (size, noun, colour) if w]
        else:
            words = [w for w in (noun, colour, size) if w]
        phrase = self.article(gender, words[0]) + " ".join(words)
        return f"{phrase} {self.positions[m.position]}" if m.position else phrase


class French(Romance):
    code = "fr"
    conjunction = "et"
    templates = (("{list}", "np"), ("une image avec {list}", "np"), ("il y a {list}", "np"),
                 ("on voit {list}", "np"))
    articles = {"m": "un", "f": "une"}
    nouns = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
             "star": ("étoile", "f"), "ring": ("anneau", "m"), "diamond": ("losange", "m")}
    adjectives = {"red": ("rouge", "rouge"), "orange": ("orange", "orange"), "yellow": ("jaune", "jaune"),
                  "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "purple": ("violet", "violette"),
                  "black": ("noir", "noire"), "white": ("blanc", "blanche"),
                  "small": ("petit", "petite"), "large": ("grand", "grande")}
    positions = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas",
                 "centre": "au centre"}


class Spanish(Romance):
    code = "es"
    conjunction = "y"
    size_before_noun = False
    templates = (("{list}", "np"), ("una imagen con {list}", "np"), ("hay {list}", "np"),
                 ("se {ve|ven} {list}", "np"))
    articles = {"m": "un", "f": "una"}
    nouns = {"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
             "star": ("estrella", "f"), "ring": ("anillo", "m"), "diamond": ("rombo", "m")}
    adjectives = {"red": ("rojo", "roja"), "orange": ("naranja", "naranja"), "yellow": ("amarillo", "amarilla"),
                  "green": ("verde", "verde"), "blue": ("azul", "azul"), "purple": ("morado", "morada"),
                  "black": ("negro", "negra"), "white": ("blanco", "blanca"),
                  "small": ("pequeño", "pequeña"), "large": ("grande", "grande")}
    positions = {"left": "a la izquierda", "right": "a la derecha", "top": "arriba", "bottom": "abajo",
                 "centre": "en el centro"}


class Italian(Romance):
    code = "it"
    conjunction = "e"
    templates = (("{list}", "np"), ("un'immagine con {list}", "np"), ("{c'è|ci sono} {list}", "np"),
                 ("si {vede|vedono} {list}", "np"))
    nouns = {"circle": ("cerchio", "m"), "square": ("quadrato", "m"), "triangle": ("triangolo", "m"),
             "star": ("stella", "f"), "ring": ("anello", "m"), "diamond": ("rombo", "m")}
    adjectives = {"red": ("rosso", "rossa"), "orange": ("arancione", "arancione"), "yellow": ("giallo", "gialla"),
                  "green": ("verde", "verde"), "blue": ("blu", "blu"), "purple": ("viola", "viola"),
                  "black": ("nero", "nera"), "white": ("bianco", "bianca"),
                  "small": ("piccolo", "piccola"), "large": ("grande", "grande")}
    positions = {"left": "a sinistra", "right": "a destra", "top": "in alto", "bottom": "in basso",
                 "centre": "al centro"}
    _uno = re.compile(r"s[^aeiou]|z|gn|ps|x|y|i[aeiou]")

    def article(self, gender: str, next_word: str) -> str:
        """un/uno (masculine, uno before s+consonant, z, gn, ps, x, y), una/un' (feminine, un' before a vowel)."""
        word = next_word.lower()
        if gender == "f":
            return "un'" if word[0] in "aeiouàèéìòù" else "una "
        return "uno " if self._uno.match(word) else "un "


# --------------------------------------------------------------------------- Slavic
class Slavic(Grammar):
    """Adjectives (stem + ending by stem class, case, gender) + noun form by case; position last."""

    nouns: dict[str, tuple[str, dict[str, str]]] = {}
    adjectives: dict[str, tuple[str, str]] = {}
    endings: dict[str, dict[tuple[str, str], str]] = {}
    positions: dict[str, str] = {}

    def noun_phrase(self, m: Mention, case: str) -> str:
        gender, forms = self.nouns[m.shape]
        words = []
        for attribute in (m.size, m.colour):
            if attribute:
                stem, klass = self.adjectives[attribute]
                words.append(stem + self.endings[klass][case, gender])
        phrase = " ".join([*words, forms[case]])
        return f"{phrase} {self.positions[m.position]}" if m.position else phrase


def _endings(table: str) -> dict[tuple[str, str], str]:
    """Parse ``"nom: m f n; acc: m f n; ins: m f n"`` into {(case, gender): ending}."""
    out = {}
    for row in table.split(";"):
        case, forms = row.split(":")
        for gender, ending in zip("mfn", forms.split()):
            out[case.strip(), gender] = ending
    return out


class Polish(Slavic):
    code = "pl"
    conjunction = "i"
    templates = (("{list}", "nom"), ("obrazek z {list}", "ins"), ("na obrazku widać {list}", "acc"),
                 ("na obrazku {jest|są} {list}", "nom"))
    nouns = {"circle": ("n", {"nom": "koło", "acc": "koło", "ins": "kołem"}),
             "square": ("m", {"nom": "kwadrat", "acc": "kwadrat", "ins": "kwadratem"}),
             "triangle": ("m", {"nom": "trójkąt", "acc": "trójkąt", "ins": "trójkątem"}),
             "star": ("f", {"nom": "gwiazda", "acc": "gwiazdę", "ins": "gwiazdą"}),
             "ring": ("m", {"nom": "pierścień", "acc": "pierścień", "ins": "pierścieniem"}),
             "diamond": ("m", {"nom": "romb", "acc": "romb", "ins": "rombem"})}
    adjectives = {"red": ("czerwon", "hard"), "orange": ("pomarańczow", "hard"), "yellow": ("żółt", "hard"),
                  "green": ("zielon", "hard"), "blue": ("niebiesk", "velar"), "purple": ("fioletow", "hard"),
                  "black": ("czarn", "hard"), "white": ("biał", "hard"), "small": ("mał", "hard"),
                  "large": ("duż", "hard")}
    # masculine nouns here are inanimate: accusative = nominative
    endings = {"hard": _endings("nom: y a e; acc: y ą e; ins: ym ą ym"),
               "velar": _endings("nom: i a ie; acc: i ą ie; ins: im ą im")}
    positions = {"left": "po lewej", "right": "po prawej", "top": "u góry", "bottom": "na dole",
                 "centre": "na środku"}


class Russian(Slavic):
    code = "ru"
    conjunction = "и"
    templates = (("{list}", "nom"), ("на картинке {list}", "nom"), ("картинка с {list}", "ins"),
                 ("на картинке можно увидеть {list}", "acc"))
    nouns = {"circle": ("m", {"nom": "круг", "acc": "круг", "ins": "кругом"}),
             "square": ("m", {"nom": "квадрат", "acc": "квадрат", "ins": "квадратом"}),
             "triangle": ("m", {"nom": "треугольник", "acc": "треугольник", "ins": "треугольником"}),
             "star": ("f", {"nom": "звезда", "acc": "звезду", "ins": "звездой"}),
             "ring": ("n", {"nom": "кольцо", "acc": "кольцо", "ins": "кольцом"}),
             "diamond": ("m", {"nom": "ромб", "acc": "ромб", "ins": "ромбом"})}
    adjectives = {"red": ("красн", "hard"), "orange": ("оранжев", "hard"), "yellow": ("жёлт", "hard"),
                  "green": ("зелён", "hard"), "blue": ("син", "soft"), "purple": ("фиолетов", "hard"),
                  "black": ("чёрн", "hard"), "white": ("бел", "hard"), "small": ("маленьк", "velar"),
                  "large": ("больш", "stressed")}
    endings = {"hard": _endings("nom: ый ая ое; acc: ый ую ое; ins: ым ой ым"),
               "soft": _endings("nom: ий яя ее; acc: ий юю ее; ins: им ей им"),
               "velar": _endings("nom: ий ая ое; acc: ий ую ое; ins: им ой им"),
               "stressed": _endings("nom: ой ая ое; acc: ой ую ое; ins: им ой им")}
    positions = {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "centre": "в центре"}


# --------------------------------------------------------------------------- Turkish
_TR_BACK, _TR_FRONT, _TR_VOICELESS = "aıou", "eiöü", "çfhkpsşt"


def tr_suffix(word: str, suffix: str) -> str:
    """Attach a Turkish suffix written with archiphonemes.

    ``A`` is a/e by two-way vowel harmony with the word's last vowel, ``D`` is d/t (t after a
    voiceless consonant), and a leading ``y`` is a buffer kept only after a vowel.
    E.g. ``tr_suffix("üst", "DA") == "üstte"``, ``tr_suffix("halka", "ylA") == "halkayla"``.
    """
    last_vowel = [c for c in word if c in _TR_BACK + _TR_FRONT][-1]
    ends_in_vowel = word[-1] in _TR_BACK + _TR_FRONT
    out = suffix[1:] if suffix.startswith("y") and not ends_in_vowel else suffix
    out = out.replace("A", "a" if last_vowel in _TR_BACK else "e")
    out = out.replace("D", "t" if word[-1] in _TR_VOICELESS else "d")
    return word + out


class Turkish(Grammar):
    code = "tr"
    conjunction = "ve"
    templates = (("{list}", "np"), ("resimde {list} var", "np"), ("{list} içeren bir resim", "np"),
                 ("{list} görülüyor", "ile"))
    nouns = {"circle": "daire", "square": "kare", "triangle": "üçgen", "star": "yıldız", "ring": "halka",
             "diamond": "eşkenar dörtgen"}
    words = {"red": "kırmızı", "orange": "turuncu", "yellow": "sarı", "green": "yeşil", "blue": "mavi",
             "purple": "mor", "black": "siyah", "white": "beyaz", "small": "küçük", "large": "büyük"}
    positions = {"left": "sol", "right": "sağ", "top": "üst", "bottom": "alt", "centre": "orta"}

    def noun_phrase(self, m: Mention, case: str) -> str:
        """``[solda] [büyük] kırmızı bir daire``: locative position first, adjectives before ``bir``."""
        words = [tr_suffix(self.positions[m.position], "DA")] if m.position else []
        words += [self.words[a] for a in (m.size, m.colour) if a]
        return " ".join([*words, "bir", self.nouns[m.shape]])

    def join(self, phrases: list[str], case: str) -> str:
        """``ile`` lists put the comitative suffix on the second-last phrase: "bir daireyle bir kare"."""
        if case != "ile" or len(phrases) == 1:
            return super().join(phrases, case)
        head = "".join(p + ", " for p in phrases[:-2])
        return f"{head}{tr_suffix(phrases[-2], 'ylA')} {phrases[-1]}"

    def capitalise(self, text: str) -> str:
        first = {"i": "İ", "ı": "I"}.get(text[:1], text[:1].upper())
        return first + text[1:]


# --------------------------------------------------------------------------- East Asian
class Chinese(Grammar):
    code = "zh"
    cased_script = False
    templates = (("{list}", "np"), ("这张图片里有{list}", "np"), ("一张有{list}的图片", "np"),
                 ("图中{clauses}", "clauses"))
    nouns = {"circle": ("圆形", "个"), "square": ("正方形", "个"), "triangle": ("三角形", "个"),
             "star": ("星星", "颗"), "ring": ("圆环", "个"), "diamond": ("菱形", "个")}
    words = {"red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "blue": "蓝色",
             "purple": "紫色", "black": "黑色", "white": "白色", "small": "小", "large": "大"}
    positions = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "centre": "中间"}

    def bare(self, m: Mention) -> str:
        """Numeral + measure word + colour 的 + size + noun: 一颗蓝色的小星星."""
        noun, measure = self.nouns[m.shape]
        return f"一{measure}{self.words[m.colour]}的{self.words[m.size] if m.size else ''}{noun}"

    def noun_phrase(self, m: Mention, case: str) -> str:
        return f"{self.positions[m.position]}的{self.bare(m)}" if m.position else self.bare(m)

    def join(self, phrases: list[str], case: str) -> str:
        return phrases[0] if len(phrases) == 1 else "、".join(phrases[:-1]) + "和" + phrases[-1]

    def clauses(self, mentions: Sequence[Mention]) -> str:
        """左边有一个…，右边有一个…; an unplaced mention after the first says 还有 ("also there is")."""
        parts = []
        for i, m in enumerate(mentions):
            place = self.positions[m.position] if m.position else ("" if i == 0 else "还")
            parts.append(f"{place}有{self.bare(m)}")
        return "，".join(parts)


class Japanese(Grammar):
    code = "ja"
    cased_script = False
    templates = (("{list}", "np"), ("{list}が描かれた画像", "np"), ("{list}がある絵", "np"),
                 ("{clauses}", "clauses"))
    nouns = {"circle": "円", "square": "正方形", "triangle": "三角形", "star": "星", "ring": "リング",
             "diamond": "ひし形"}
    words = {"red": "赤い", "orange": "オレンジ色の", "yellow": "黄色い", "green": "緑の", "blue": "青い",
             "purple": "紫の", "black": "黒い", "white": "白い", "small": "小さな", "large": "大きな"}
    positions = {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "真ん中"}

    def bare(self, m: Mention) -> str:
        return "".join(self.words[a] for a in (m.size, m.colour) if a) + self.nouns[m.shape]

    def noun_phrase(self, m: Mention, case: str) -> str:
        return f"{self.positions[m.position]}の{self.bare(m)}" if m.position else self.bare(m)

    def join(self, phrases: list[str], case: str) -> str:
        return phrases[0] if len(phrases) == 1 else "、".join(phrases[:-1]) + "と" + phrases[-1]

    def clauses(self, mentions: Sequence[Mention]) -> str:
        """左に大きな赤い円があり、右に…があります (continuative あり, polite final あります)."""
        parts = []
        for i, m in enumerate(mentions):
            place = f"{self.positions[m.position]}に" if m.position else ""
            verb = "あります" if i == len(mentions) - 1 else "あり"
            parts.append(f"{place}{self.bare(m)}が{verb}")
        return "、".join(parts)


_KO_PARTICLE = re.compile(r"\{([^{}/]+)/([^{}/]+)\}")


def ko_has_batchim(syllable: str) -> bool:
    """Whether a precomposed Hangul syllable ends in a consonant (batchim)."""
    code = ord(syllable) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0


class Korean(Grammar):
    code = "ko"
    cased_script = False
    templates = (("{list}", "np"), ("{list}{이/가} 있는 그림", "np"), ("{list}{을/를} 보여 주는 이미지", "np"),
                 ("{clauses}", "clauses"))
    nouns = {"circle": "원", "square": "정사각형", "triangle": "삼각형", "star": "별", "ring": "고리",
             "diamond": "마름모"}
    words = {"red": "빨간", "orange": "주황색", "yellow": "노란", "green": "초록색", "blue": "파란",
             "purple": "보라색", "black": "검은", "white": "흰", "small": "작은", "large": "큰"}
    positions = {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽", "centre": "가운데"}

    def bare(self, m: Mention) -> str:
        return " ".join([*(self.words[a] for a in (m.size, m.colour) if a), self.nouns[m.shape]])

    def noun_phrase(self, m: Mention, case: str) -> str:
        return f"{self.positions[m.position]}의 {self.bare(m)}" if m.position else self.bare(m)

    def join(self, phrases: list[str], case: str) -> str:
        """"A과/와 B", "A, B과/와 C" (the particle is resolved in :meth:`finish`)."""
        if len(phrases) == 1:
            return phrases[0]
        return ", ".join(phrases[:-1]) + "{과/와} " + phrases[-1]

    def clauses(self, mentions: Sequence[Mention]) -> str:
        """왼쪽에 큰 빨간 원이 있고 오른쪽에 … 있습니다."""
        parts = []
        for i, m in enumerate(mentions):
            place = f"{self.positions[m.position]}에 " if m.position else ""
            verb = "있습니다" if i == len(mentions) - 1 else "있고"
            parts.append(f"{place}{self.bare(m)}{{이/가}} {verb}")
        return " ".join(parts)

    def finish(self, text: str) -> str:
        """Resolve ``{after-consonant/after-vowel}`` particles by the preceding syllable."""
        return _KO_PARTICLE.sub(
            lambda g: g.group(1) if ko_has_batchim(text[g.start() - 1]) else g.group(2), text)


GRAMMARS: MappingProxyType = MappingProxyType(
    {g.code: g for g in (English(), German(), French(), Spanish(), Italian(), Polish(), Russian(), Turkish(),
                         Chinese(), Japanese(), Korean())})


def template_count(lang: str) -> int:
    """Number of paraphrase templates of ``lang``."""
    return len(GRAMMARS[lang].templates)


def render_caption(lang: str, mentions: Sequence[Mention], template: int = 0) -> str:
    """Caption in ``lang`` (canonical code) for ``mentions`` using paraphrase ``template``."""
    return GRAMMARS[lang].render(mentions, template)
