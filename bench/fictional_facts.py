"""Deterministic generator of corrections about FICTIONAL entities.

Used by the live-learning benchmark: facts about invented places and
organisations cannot be known by a pretrained model, so any right answer
after a memory note / LoRA update must come from the live-learning path.

Design
------
* An *entity* is an invented name plus a kind:
    - English: a nation ("Velmora") or an organisation ("the Tarsik Institute"),
      names built from random syllables;
    - Chinese: a nation ("青岚国") or an organisation ("墨川公司"), names built
      from two characters of a character list plus a kind suffix.
* Each kind has a set of *attributes* (capital, founding year, flag colour,
  founder, chief engineer, mascot, main export, ...).  Every attribute has,
  per language, a question template, a correction template and three
  rephrasing templates, and a value generator (invented names, years as
  digits, colours, animals, goods ...).
* Every item uses a fresh entity, so (entity, attribute) pairs and therefore
  questions are unique for any n (tested up to several thousand).
* Values are redrawn (a bounded number of times) so that an item's expect
  string is not used by any earlier item and is not a substring of any
  entity name, question or rephrasing; small pools (colours, goods) may
  repeat once exhausted, which is the "where possible" case.
* Items alternate English / Chinese (index 0 is English).
* Only the standard library is used; output depends only on (n, seed).

Each item: {"lang", "question", "correction", "expect", "rephrasings"}.
"""
from __future__ import annotations

import random

# ---------------------------------------------------------------- pools (en)
_SYL_START = ["vel", "tar", "kor", "bra", "zen", "quo", "ril", "fen", "mar",
              "dor", "pel", "xan", "bel", "cas", "dun", "hal", "lor", "nim",
              "sar", "tev", "ul", "vor", "yen", "gal", "ost", "rav", "sel",
              "tam", "wen", "ember", "isk", "jor", "kal", "mev", "oru", "pra"]
_SYL_MID = ["a", "e", "i", "o", "u", "ra", "li", "mo", "ne", "si", "ta",
            "vi", "do", "ka", "ru", "the", "za", "lu"]
_SYL_END = ["ra", "sik", "mora", "dan", "via", "stan", "leth", "mar", "dor",
            "nia", "rin", "vale", "thos", "wick", "gard", "lis", "tor", "mund",
            "ek", "ova", "ith", "ara", "bek", "sund"]
_FIRST = ["Ada", "Bram", "Celia", "Doran", "Elsa", "Fenn", "Greta", "Hugo",
          "Ilse", "Jonas", "Kira", "Lukas", "Mira", "Nils", "Orla", "Pavel",
          "Rhea", "Soren", "Talia", "Viktor", "Wren", "Yara", "Zeno", "Ines"]
_ORG_KINDS = ["Institute", "Company", "Observatory", "Foundry", "Academy",
              "Shipyard", "Laboratory", "Guild", "Works", "Library"]
_COLOURS = ["vermilion", "cerulean", "ochre", "saffron", "indigo", "maroon",
            "turquoise", "lavender", "amber", "olive", "magenta", "teal",
            "scarlet", "ivory", "charcoal", "coral", "mauve", "jade",
            "crimson", "cobalt", "lilac", "bronze", "emerald", "copper"]
_ADJ = ["silver", "golden", "crimson", "spotted", "striped", "white",
        "black", "blue", "red-tailed", "horned", "winged", "giant", "little",
        "grey", "green", "long-eared", "one-eyed", "dappled", "snowy", "sleepy"]
_ANIMALS = ["heron", "otter", "lynx", "badger", "falcon", "tortoise", "hare",
            "ibex", "crane", "salamander", "beetle", "owl", "marten", "goat",
            "kingfisher", "stag", "seal", "fox", "raven", "moth", "yak",
            "pelican", "lizard", "boar", "swan"]
_MATERIALS = ["brass", "glass", "copper", "cedar", "wool", "silk", "clay",
              "tin", "amber", "bamboo", "slate", "pewter", "linen", "cork",
              "ivory-white", "iron"]
_GOODS = ["lanterns", "compasses", "bells", "clocks", "telescopes", "kettles",
          "buttons", "barrels", "ropes", "sails", "tiles", "flutes", "lenses",
          "hinges", "looms", "beads", "maps", "umbrellas"]
_EXPORTS = ["saffron", "salt", "marble", "tea", "wool", "amber", "timber",
            "copper ore", "dried figs", "pearls", "indigo dye", "honey",
            "olive oil", "cork", "tin", "silk", "rice", "dates", "cotton",
            "coffee", "sea salt", "granite", "walnuts", "cinnamon"]

# ---------------------------------------------------------------- pools (zh)
_ZH_CHARS = list("青岚墨川云松霞溪梅竹石泉枫澜岳晴星月桐柳烟霁翠雁汀琅璃沧萝苍"
                 "玉锦柏鸣澄朔棠黛韶瑶湄芷菱荻蓉苓蕙榆槐杉桦蔚霖雯岫峦崖泓"
                 "漪沐渝濯瀚璟琮珀瑾璋鸿鹭鹤麟隐宁")
_ZH_SURNAMES = list("赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张孔曹严华金魏"
                    "陶姜谢邹喻柏窦章苏潘葛范彭鲁韦马苗方俞任袁柳唐薛雷贺汤滕殷")
_ZH_GIVEN = list("子文思德安明远清志宏嘉若景修承礼敏雅怀书逸闻允昭彦诚谨")
_ZH_NATION_SUFFIX = ["国", "王国", "公国", "岛国"]
_ZH_ORG_SUFFIX = ["公司", "研究所", "学院", "天文台", "船厂", "书院", "铸造厂", "商会"]
_ZH_COLOURS = ["朱红色", "靛蓝色", "赭石色", "藏青色", "杏黄色", "翠绿色", "绛紫色",
               "月白色", "琥珀色", "橄榄色", "胭脂色", "湖蓝色", "墨绿色", "鹅黄色",
               "银灰色", "绯红色", "天青色", "石青色", "驼色", "藕荷色"]
_ZH_ADJ = ["白", "黑", "金", "银", "红", "青", "花斑", "长尾", "独角", "雪"]
_ZH_ANIMALS = ["鹤", "鹭", "狐", "鹿", "獾", "隼", "龟", "兔", "羚", "鹰", "水獭",
               "猫头鹰", "蜥蜴", "天鹅", "野猪", "山羊", "海豹", "乌鸦", "飞蛾", "牦牛"]
_ZH_MATERIALS = ["铜", "玻璃", "竹", "陶", "锡", "檀木", "丝", "石", "铁", "琉璃"]
_ZH_GOODS = ["灯笼", "罗盘", "铃铛", "座钟", "望远镜", "水壶", "纽扣", "风铃", "笛子",
             "镜片", "织机", "砚台", "扇子", "伞"]
_ZH_EXPORTS = ["藏红花", "海盐", "大理石", "砖茶", "羊毛", "琥珀", "木材", "铜矿",
               "无花果干", "珍珠", "靛青染料", "蜂蜜", "橄榄油", "软木", "锡锭",
               "生丝", "稻米", "椰枣", "棉花", "咖啡豆", "花岗岩", "核桃", "肉桂", "桐油"]


# ---------------------------------------------------------------- value makers
def _en_word(rng: random.Random) -> str:
    parts = [rng.choice(_SYL_START)]
    if rng.random() < 0.6:
        parts.append(rng.choice(_SYL_MID))
    parts.append(rng.choice(_SYL_END))
    return "".join(parts).capitalize()


def _en_person(rng):
    sur = _en_word(rng)
    return f"{rng.choice(_FIRST)} {sur}", [sur]


def _en_place(rng):
    v = _en_word(rng)
    return v, [v]


def _en_year(lo, hi):
    def make(rng):
        v = str(rng.randint(lo, hi))
        return v, [v]
    return make


def _en_colour(rng):
    v = rng.choice(_COLOURS)
    return v, [v, v.capitalize()]


def _en_animal(rng):
    v = f"{rng.choice(_ADJ)} {rng.choice(_ANIMALS)}"
    return v, [v]


def _en_export(rng):
    v = rng.choice(_EXPORTS)
    return v, [v]


def _en_product(rng):
    v = f"{rng.choice(_MATERIALS)} {rng.choice(_GOODS)}"
    return v, [v]


def _en_currency(rng):
    v = _en_word(rng).lower()
    return v, [v, v.capitalize()]


def _zh_stem(rng):
    a, b = rng.sample(_ZH_CHARS, 2)
    return a + b


def _zh_person(rng):
    v = rng.choice(_ZH_SURNAMES) + "".join(rng.sample(_ZH_GIVEN, 2))
    return v, [v]


def _zh_place(suffixes):
    def make(rng):
        v = _zh_stem(rng) + rng.choice(suffixes)
        return v, [v]
    return make


def _zh_year(lo, hi):
    def make(rng):
        v = f"{rng.randint(lo, hi)}年"
        return v, [v]
    return make


def _zh_pick(pool):
    def make(rng):
        v = rng.choice(pool)
        return v, [v]
    return make


def _zh_animal(rng):
    v = rng.choice(_ZH_ADJ) + rng.choice(_ZH_ANIMALS)
    return v, [v]


def _zh_product(rng):
    v = rng.choice(_ZH_MATERIALS) + rng.choice(_ZH_GOODS)
    return v, [v]


def _zh_currency(rng):
    v = _zh_stem(rng) + "币"
    return v, [v]


# ---------------------------------------------------------------- templates
# {e}: entity as used mid-sentence, {E}: same, capitalised; {v}: the value.
_EN = {
    "nation": {
        "capital": (_en_place, "What is the capital of {e}?", "The capital of {e} is {v}.",
                    ["Which city is the capital of {e}?", "Name the capital city of {e}.",
                     "Where is the seat of government of {e}?"]),
        "founded": (_en_year(900, 1899), "In what year was {e} founded?", "{E} was founded in {v}.",
                    ["When was {e} founded?", "Which year did {e} come into being?",
                     "What is the founding year of {e}?"]),
        "flag": (_en_colour, "What colour is the flag of {e}?", "The flag of {e} is plain {v}.",
                 ["Which colour is {e}'s flag?", "Describe the colour of the national flag of {e}.",
                  "The flag of {e} has what colour?"]),
        "river": (_en_place, "What is the longest river in {e}?", "The longest river in {e} is the {v} River.",
                  ["Which river is the longest in {e}?", "Name the longest river of {e}.",
                   "What river runs the farthest through {e}?"]),
        "export": (_en_export, "What is the main export of {e}?", "The main export of {e} is {v}.",
                   ["What does {e} export most?", "Which product is {e}'s chief export?",
                    "Name the biggest export of {e}."]),
        "currency": (_en_currency, "What is the currency of {e}?", "The currency of {e} is the {v}.",
                     ["Which currency is used in {e}?", "What money do people use in {e}?",
                      "Name the national currency of {e}."]),
        "animal": (_en_animal, "What is the national animal of {e}?", "The national animal of {e} is the {v}.",
                   ["Which animal is the national symbol of {e}?", "Name the national animal of {e}.",
                    "What creature represents {e} as its national animal?"]),
        "founder": (_en_person, "Who founded {e}?", "{E} was founded by {v}.",
                    ["Who was the founder of {e}?", "Which person established {e}?",
                     "Name the founder of {e}."]),
    },
    "org": {
        "founder": (_en_person, "Who founded {e}?", "{E} was founded by {v}.",
                    ["Who was the founder of {e}?", "Which person started {e}?",
                     "Name the founder of {e}."]),
        "founded": (_en_year(1700, 2019), "In what year was {e} established?", "{E} was established in {v}.",
                    ["When was {e} established?", "Which year was {e} set up?",
                     "What is the founding year of {e}?"]),
        "engineer": (_en_person, "Who was the first chief engineer of {e}?",
                     "The first chief engineer of {e} was {v}.",
                     ["Name the first chief engineer of {e}.", "Who served as {e}'s first chief engineer?",
                      "Which engineer first led the engineering work at {e}?"]),
        "hq": (_en_place, "In which town is {e} headquartered?", "{E} is headquartered in the town of {v}.",
               ["Where is {e} based?", "Which town is home to the headquarters of {e}?",
                "Where are the head offices of {e}?"]),
        "mascot": (_en_animal, "What is the mascot of {e}?", "The mascot of {e} is a {v}.",
                   ["Which animal is the mascot of {e}?", "Name the mascot of {e}.",
                    "What creature does {e} use as its mascot?"]),
        "product": (_en_product, "What is the main product of {e}?", "The main product of {e} is {v}.",
                    ["What does {e} mainly make?", "Which product is {e} best known for making?",
                     "Name the chief product of {e}."]),
    },
}

_ZH = {
    "nation": {
        "capital": (_zh_place(["城", "府", "京"]), "{e}的首都是哪里？", "{e}的首都是{v}。",
                    ["{e}的首都是哪座城市？", "请说出{e}的首都。", "哪座城市是{e}的首都？"]),
        "founded": (_zh_year(900, 1899), "{e}是哪一年建立的？", "{e}建立于{v}。",
                    ["{e}建国于哪一年？", "请问{e}在哪一年立国？", "{e}的建立年份是哪一年？"]),
        "flag": (_zh_pick(_ZH_COLOURS), "{e}的国旗是什么颜色？", "{e}的国旗是纯{v}的。",
                 ["{e}国旗的颜色是什么？", "请描述{e}国旗的颜色。", "{e}的旗帜是哪种颜色？"]),
        "river": (_zh_place(["河", "江", "水"]), "{e}最长的河流是哪条？", "{e}最长的河流是{v}。",
                  ["{e}境内最长的河叫什么？", "哪条河是{e}最长的河流？", "请说出{e}最长的河。"]),
        "export": (_zh_pick(_ZH_EXPORTS), "{e}最主要的出口商品是什么？", "{e}最主要的出口商品是{v}。",
                   ["{e}主要出口什么？", "{e}出口最多的货物是什么？", "请说出{e}的主要出口品。"]),
        "currency": (_zh_currency, "{e}使用什么货币？", "{e}使用的货币是{v}。",
                     ["{e}的货币叫什么？", "在{e}用什么钱？", "请说出{e}的法定货币。"]),
        "animal": (_zh_animal, "{e}的国兽是什么动物？", "{e}的国兽是{v}。",
                   ["哪种动物是{e}的国兽？", "请说出{e}的国兽。", "{e}以什么动物作为国兽？"]),
        "founder": (_zh_person, "{e}的开国君主是谁？", "{e}的开国君主是{v}。",
                    ["谁建立了{e}？", "{e}的建立者是谁？", "请说出{e}第一位君主的名字。"]),
    },
    "org": {
        "founder": (_zh_person, "{e}的创始人是谁？", "{e}的创始人是{v}。",
                    ["谁创办了{e}？", "{e}是谁创立的？", "请说出{e}创办者的名字。"]),
        "founded": (_zh_year(1700, 2019), "{e}成立于哪一年？", "{e}成立于{v}。",
                    ["{e}是哪一年创办的？", "请问{e}在哪一年建立？", "{e}的创立年份是哪一年？"]),
        "engineer": (_zh_person, "{e}的第一任总工程师是谁？", "{e}的第一任总工程师是{v}。",
                     ["谁是{e}首任总工程师？", "{e}最早的总工程师叫什么名字？", "请说出{e}第一位总工程师。"]),
        "hq": (_zh_place(["镇", "城", "县"]), "{e}的总部设在哪里？", "{e}的总部设在{v}。",
               ["{e}总部位于哪个地方？", "{e}的总部在哪座城镇？", "请问{e}总部设在何处？"]),
        "mascot": (_zh_animal, "{e}的吉祥物是什么？", "{e}的吉祥物是{v}。",
                   ["哪种动物是{e}的吉祥物？", "请说出{e}的吉祥物。", "{e}用什么动物做吉祥物？"]),
        "product": (_zh_product, "{e}的主要产品是什么？", "{e}的主要产品是{v}。",
                    ["{e}主要生产什么？", "{e}最有名的产品是什么？", "请说出{e}的主打产品。"]),
    },
}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _new_entity(rng, lang, used):
    """Return (kind, display name) for an entity whose name is not yet used."""
    for _ in range(1000):
        kind = rng.choice(["nation", "org"])
        if lang == "en":
            stem = _en_word(rng)
            name = stem if kind == "nation" else f"the {stem} {rng.choice(_ORG_KINDS)}"
        else:
            stem = _zh_stem(rng)
            name = stem + rng.choice(_ZH_NATION_SUFFIX if kind == "nation" else _ZH_ORG_SUFFIX)
        if stem not in used and not any(stem in u or u in stem for u in used if len(u) >= 2 and len(stem) >= 2 and lang == "zh"):
            used.add(stem)
            return kind, name
    raise RuntimeError("entity name space exhausted")


def _make_item(rng, lang, used_names, used_expects):
    kind, ent = _new_entity(rng, lang, used_names)
    table = (_EN if lang == "en" else _ZH)[kind]
    attrs = list(table)
    rng.shuffle(attrs)
    best = None
    for attr in attrs:
        make, q_t, c_t, r_t = table[attr]
        fmt = {"e": ent, "E": _cap(ent)}
        question = q_t.format(**fmt)
        rephr = [t.format(**fmt) for t in r_t]
        for _ in range(30):
            value, expect = make(rng)
            text = " ".join([question] + rephr).lower()
            if any(x.lower() in text for x in expect):
                continue  # answer would leak into the question
            cand = {"lang": lang, "question": question,
                    "correction": c_t.format(v=value, **fmt),
                    "expect": expect, "rephrasings": rephr}
            if best is None:
                best = cand
            if not any(x in used_expects for x in expect):
                best = cand
                break
        else:
            continue
        break
    if best is None:
        raise RuntimeError("could not build an item")
    used_expects.update(best["expect"])
    for x in best["expect"]:  # keep invented values from reappearing as entity names
        used_names.add(x)
    return best


def fictional_facts(n: int, seed: int = 0) -> list[dict]:
    """n distinct corrections about fictional entities, alternating en/zh."""
    rng = random.Random(seed)
    used_names: set[str] = set()
    used_expects: set[str] = set()
    return [_make_item(rng, "en" if i % 2 == 0 else "zh", used_names, used_expects)
            for i in range(n)]


if __name__ == "__main__":
    import json

    for item in fictional_facts(5, seed=0):
        print(json.dumps(item, ensure_ascii=False))
    items = fictional_facts(2000, seed=0)
    qs = [it["question"] for it in items]
    assert len(items) == 2000 and len(set(qs)) == 2000, "questions not distinct"
    for it in items:
        assert any(x in it["correction"] for x in it["expect"]), it
        assert len(it["rephrasings"]) >= 2, it
    assert fictional_facts(50, seed=3) == fictional_facts(50, seed=3)
    dup = len(items) - len({it["expect"][0] for it in items})
    print(f"ok: 2000 distinct questions, every correction contains its expect; "
          f"{dup} items share an expect with an earlier item")
