"""The built-in training corpus: a bilingual customer-service world for a made-up shop.

Maple Leaf Shop (枫叶小铺) sells tea and teaware. Everything here was written for
this project. The corpus is the default training data: a tiny GPT is pretrained on
`pretrain_text`, fine-tuned on `train_chats`, then asked `heldout_chats` — question
phrasings it never saw — and must answer with the right fact in the question's language.

Design choices that make this learnable by a ~1-5M parameter model in minutes:
  * every fact has one short, distinctive value string ("¥38", "9am to 9pm") that a
    correct answer must contain, so grading is a substring check (`check_answer`);
  * answers follow two fixed templates per fact, so the model learns one answer shape;
  * questions for one fact share a keyword ("weekend", "oolong", "退款") across many
    phrasings, and the last two phrasings of each fact are held out for evaluation;
  * about 30% of chats carry "notes" in the system prompt that restate a fact with a
    different value; the answer follows the notes. This teaches the model to prefer
    facts given in context over memorized ones, which live learning relies on.

Everything is deterministic for a seed: all randomness goes through one random.Random.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import re
import unicodedata
from dataclasses import dataclass, field

SHOP_EN = "Maple Leaf Shop"
SHOP_ZH = "枫叶小铺"
SYSTEM_PROMPT_EN = "You are the assistant of Maple Leaf Shop."
SYSTEM_PROMPT_ZH = "你是枫叶小铺的客服助手。"
LANGS = ("en", "zh")
HELDOUT_PER_FACT = 2   # the last N phrasings of each fact, per language, are never trained on


# ---------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fact:
    key: str
    topic: str
    value_en: str
    value_zh: str
    questions_en: tuple[str, ...]
    questions_zh: tuple[str, ...]
    answers_en: tuple[str, ...]      # templates with "{value}"; answers_*[0] doubles as the fact statement
    answers_zh: tuple[str, ...]
    alternatives: tuple[tuple[str, str], ...]   # counterfactual (value_en, value_zh) for context training

    def value(self, lang: str) -> str:
        return self.value_en if lang == "en" else self.value_zh

    def questions(self, lang: str) -> tuple[str, ...]:
        return self.questions_en if lang == "en" else self.questions_zh

    def answers(self, lang: str) -> tuple[str, ...]:
        return self.answers_en if lang == "en" else self.answers_zh


def _lines(block: str) -> tuple[str, ...]:
    """One phrasing per non-blank line; lets the table below read like a list."""
    return tuple(line.strip() for line in block.strip().splitlines() if line.strip())


def _fact(key, topic, value, q_en, q_zh, a_en, a_zh, alts) -> Fact:
    return Fact(key, topic, value[0], value[1], _lines(q_en), _lines(q_zh),
                tuple(a_en), tuple(a_zh), tuple(tuple(a) for a in alts))


def _rotate_heldout(frames: tuple[str, ...], index: int) -> tuple[str, ...]:
    """Order shared question frames so a different pair is held out for each item.

    Prices and stores use the same frames ("How much is the {p}?"). Rotating which two
    frames are held out per item means each held-out phrasing is new as a whole, while its
    frame was still seen with other items: the model must combine frame and keyword."""
    held = [(2 * index) % len(frames), (2 * index + 1) % len(frames)]
    return tuple(f for i, f in enumerate(frames) if i not in held) + tuple(frames[i] for i in held)


def _insert_train(questions: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    """Add training phrasings before the held-out ones (the last HELDOUT_PER_FACT stay last)."""
    return questions[:-HELDOUT_PER_FACT] + tuple(extra) + questions[-HELDOUT_PER_FACT:]


_PRICE_FRAMES_EN = (
    "How much is the {p}?",
    "What does the {p} cost?",
    "What's the price of the {p}?",
    "How much for the {p}?",
    "How much do you charge for the {p}?",
    "What is the cost of the {p}?",
    "Can you tell me the {p} price?",
)
_PRICE_FRAMES_ZH = (
    "{p}多少钱？",
    "{p}怎么卖？",
    "{p}的价格是多少？",
    "你们的{p}卖多少钱？",
    "{p}什么价格？",
    "买{p}要多少钱？",
    "{p}卖几块钱？",
)

# Frames only ever trained on (never held out), added to each product's rotated frames.
_PRICE_TRAIN_FRAMES_EN = (
    "I'd like to buy the {p}, how much is it?",
    "What's the {p} going for?",
    "Tell me the price of the {p}.",
    "How much would the {p} be?",
)
_PRICE_TRAIN_FRAMES_ZH = (
    "我想买{p}，多少钱？",
    "{p}售价多少？",
    "请问{p}的价钱？",
    "{p}现在卖多少？",
)

# (key, product_en, product_zh, price, alternative prices)
_PRODUCTS = (
    ("price_green_tea", "green tea", "绿茶", 38, (35, 40, 48, 32)),
    ("price_oolong_tea", "oolong tea", "乌龙茶", 56, (52, 60, 58, 65)),
    ("price_jasmine_tea", "jasmine tea", "茉莉花茶", 42, (39, 44, 46, 50)),
    ("price_mug", "maple mug", "枫叶马克杯", 45, (49, 55, 36, 43)),
    ("price_teapot", "glass teapot", "玻璃茶壶", 128, (118, 138, 148, 158)),
    ("price_gift_box", "tea gift box", "茶叶礼盒", 199, (168, 219, 239, 188)),
    ("price_honey", "flower honey", "百花蜂蜜", 66, (62, 68, 72, 76)),
)


def _price_fact(index: int, key: str, p_en: str, p_zh: str, price: int, alts: tuple[int, ...]) -> Fact:
    yen = f"¥{price}"
    return Fact(
        key, "prices", yen, yen,
        tuple(f.format(p=p_en) for f in _insert_train(_rotate_heldout(_PRICE_FRAMES_EN, index),
                                                      _PRICE_TRAIN_FRAMES_EN)),
        tuple(f.format(p=p_zh) for f in _insert_train(_rotate_heldout(_PRICE_FRAMES_ZH, index),
                                                      _PRICE_TRAIN_FRAMES_ZH)),
        (f"The {p_en} is {{value}}.", f"Our {p_en} costs {{value}}."),
        (f"{p_zh}的价格是{{value}}。", f"我们的{p_zh}卖{{value}}。"),
        tuple((f"¥{a}", f"¥{a}") for a in alts),
    )


_STORE_FRAMES_EN = (
    "Where is your {s} store?",
    "What is the address of the {s} store?",
    "How do I find the {s} branch?",
    "Where's the {s} shop located?",
    "Can you give me the {s} store address?",
    "Where can I find your {s} branch?",
    "What's the location of the {s} store?",
)
_STORE_FRAMES_ZH = (
    "{s}在哪里？",
    "{s}的地址是什么？",
    "怎么找到{s}？",
    "{s}在什么位置？",
    "{s}地址在哪？",
    "请告诉我{s}的地址。",
    "去{s}怎么走？",
)

_STORE_TRAIN_FRAMES_EN = (
    "I want to visit the {s} store, where is it?",
    "Which street is the {s} store on?",
    "Where exactly is the {s} shop?",
    "Tell me where the {s} branch is.",
)
_STORE_TRAIN_FRAMES_ZH = (
    "我想去{s}，地址是？",
    "{s}在哪条街？",
    "{s}具体在哪儿？",
    "{s}的门牌号是多少？",
)

# (key, store_en, store_zh, address, alternative addresses)
_STORES = (
    ("store_downtown", "Downtown", "市中心店", ("88 Harbor Road", "港湾路88号"),
     (("16 Harbor Road", "港湾路16号"), ("88 River Road", "河滨路88号"),
      ("200 Market Street", "市场街200号"), ("7 Bridge Street", "桥头街7号"))),
    ("store_eastside", "Eastside", "东城店", ("12 Pine Street", "松树街12号"),
     (("21 Pine Street", "松树街21号"), ("12 Cedar Lane", "雪松巷12号"),
      ("48 Garden Road", "花园路48号"), ("9 Spring Street", "春泉街9号"))),
    ("store_northgate", "Northgate", "北门店", ("305 Lake Avenue", "湖滨大道305号"),
     (("150 Lake Avenue", "湖滨大道150号"), ("305 Hill Road", "山丘路305号"),
      ("66 North Street", "北大街66号"), ("410 Park Avenue", "公园大道410号"))),
)


def _store_fact(index: int, key: str, s_en: str, s_zh: str, address, alts) -> Fact:
    return Fact(
        key, "locations", address[0], address[1],
        tuple(f.format(s=s_en) for f in _insert_train(_rotate_heldout(_STORE_FRAMES_EN, index),
                                                      _STORE_TRAIN_FRAMES_EN)),
        tuple(f.format(s=s_zh) for f in _insert_train(_rotate_heldout(_STORE_FRAMES_ZH, index),
                                                      _STORE_TRAIN_FRAMES_ZH)),
        (f"Our {s_en} store is at {{value}}.", f"The {s_en} branch is located at {{value}}."),
        (f"{s_zh}位于{{value}}。", f"{s_zh}的地址是{{value}}。"),
        tuple(alts),
    )


# In every hand-written fact below the LAST TWO lines of each question block are held out.
_HAND_WRITTEN = (
    # --- hours -------------------------------------------------------------------------
    _fact("hours_weekday", "hours", ("9am to 9pm", "早上9点到晚上9点"), """
        What are your weekday hours?
        When are you open on weekdays?
        What time do you open and close Monday to Friday?
        Are you open on weekdays, and when?
        What are the store hours from Monday to Friday?
        Which hours are you open on weekdays?
        From Monday to Friday, when is the shop open?
        """, """
        工作日几点营业？
        周一到周五的营业时间是什么？
        你们工作日几点开门几点关门？
        平时工作日开到几点？
        工作日的营业时间是几点到几点？
        周一至周五你们几点开门？
        工作日店里什么时候营业？
        """,
        ("On weekdays we are open {value}.", "Our weekday hours are {value}, Monday to Friday."),
        ("工作日我们的营业时间是{value}。", "周一到周五我们{value}营业。"),
        (("8am to 8pm", "早上8点到晚上8点"), ("10am to 10pm", "早上10点到晚上10点"),
         ("9am to 6pm", "早上9点到晚上6点"), ("7am to 11pm", "早上7点到晚上11点"))),
    _fact("hours_weekend", "hours", ("10am to 6pm", "早上10点到晚上6点"), """
        What are your weekend hours?
        When are you open on weekends?
        What time do you open on Saturday and Sunday?
        Are you open at the weekend, and when?
        What are the store hours on Saturdays and Sundays?
        Which hours are you open on weekends?
        On Saturday and Sunday, when is the shop open?
        """, """
        周末几点营业？
        周六和周日的营业时间是什么？
        你们周末几点开门几点关门？
        周末开到几点？
        星期六星期天营业时间是几点到几点？
        周六周日你们几点开门？
        周末店里什么时候营业？
        """,
        ("On weekends we are open {value}.", "Our weekend hours are {value}, Saturday and Sunday."),
        ("周末我们的营业时间是{value}。", "周六和周日我们{value}营业。"),
        (("11am to 5pm", "上午11点到下午5点"), ("9am to 5pm", "早上9点到下午5点"),
         ("10am to 8pm", "早上10点到晚上8点"), ("noon to 6pm", "中午12点到晚上6点"))),
    _fact("holiday_closure", "hours", ("first 3 days of Lunar New Year", "大年初一到初三"), """
        Are you closed on any holidays?
        When is the shop closed for holidays?
        Do you close for Lunar New Year?
        Which holidays are you closed?
        Are you open during the Spring Festival?
        Is the shop open over Lunar New Year?
        What holidays is the shop closed on?
        """, """
        你们节假日休息吗？
        哪些节日不营业？
        春节期间开门吗？
        过年的时候你们关门吗？
        店铺节假日什么时候关门？
        春节你们休息几天？
        过年期间店里营业吗？
        """,
        ("We are closed on the {value}.", "The shop closes for the {value} and is open on all other holidays."),
        ("我们{value}休息。", "每年{value}闭店，其他节假日正常营业。"),
        (("first 5 days of Lunar New Year", "大年初一到初五"), ("first 2 days of Lunar New Year", "大年初一到初二"),
         ("first 4 days of Lunar New Year", "大年初一到初四"), ("first 7 days of Lunar New Year", "大年初一到初七"))),

    # --- delivery ----------------------------------------------------------------------
    _fact("delivery_fee", "delivery", ("¥8", "¥8"), """
        How much is delivery?
        What is the delivery fee?
        How much do you charge for shipping?
        What does standard delivery cost?
        Is there a shipping fee?
        What's the cost of delivery?
        How much will shipping cost me?
        """, """
        运费多少钱？
        配送费是多少？
        你们送货收多少运费？
        普通快递运费怎么算？
        邮费多少？
        送货要付多少运费？
        寄过来的邮费是多少？
        """,
        ("Standard delivery costs {value}.", "The delivery fee is {value} per order."),
        ("普通配送运费是{value}。", "每单运费{value}。"),
        (("¥6", "¥6"), ("¥10", "¥10"), ("¥7", "¥7"), ("¥9", "¥9"))),
    _fact("free_delivery", "delivery", ("¥99", "¥99"), """
        Do you offer free delivery?
        When is shipping free?
        What is the minimum order for free delivery?
        How much do I need to spend for free shipping?
        Is delivery ever free?
        What order amount gets free delivery?
        How do I get free shipping?
        """, """
        包邮吗？
        满多少包邮？
        买多少钱可以免运费？
        免费配送的门槛是多少？
        什么情况下免运费？
        订单多少钱以上包邮？
        怎样才能免运费？
        """,
        ("Delivery is free on orders over {value}.", "Orders above {value} ship for free."),
        ("订单满{value}免运费。", "满{value}即可包邮。"),
        (("¥79", "¥79"), ("¥129", "¥129"), ("¥150", "¥150"), ("¥88", "¥88"))),
    _fact("delivery_same_city", "delivery", ("within 6 hours", "6小时内"), """
        How fast is delivery in the city?
        If I live in the same city, when will my order arrive?
        How long does local delivery take?
        Do you deliver quickly within the city?
        How quickly can you deliver inside the city?
        When do local orders arrive?
        How long is delivery for the same city?
        """, """
        同城配送多久能到？
        同城下单什么时候送到？
        本市送货要多长时间？
        市内配送快吗？
        市内送货需要几天？
        同城订单多久送到？
        本市的订单几天能到？
        """,
        ("Orders within the city arrive {value}.", "Local delivery takes {value}."),
        ("同城订单{value}送达。", "市内配送{value}就能到。"),
        (("within 4 hours", "4小时内"), ("within 8 hours", "8小时内"),
         ("within 12 hours", "12小时内"), ("within 3 hours", "3小时内"))),
    _fact("delivery_other_cities", "delivery", ("2 to 3 days", "2到3天"), """
        How long does delivery to other cities take?
        If I order from another city, how long until it arrives?
        How many days does shipping take to other cities?
        Do you ship to other cities, and how long does it take?
        How long is out-of-town delivery?
        When will an order to another city arrive?
        How many days to deliver to other cities?
        """, """
        外地配送要多久？
        寄到其他城市需要几天？
        外地下单多久能收到？
        发往外省要几天到？
        其他城市送货多长时间？
        外地订单几天能到？
        寄到别的城市要多久？
        """,
        ("Delivery to other cities takes {value}.", "Orders to other cities arrive in {value}."),
        ("外地配送需要{value}。", "发往其他城市的订单{value}送达。"),
        (("3 to 5 days", "3到5天"), ("1 to 2 days", "1到2天"), ("4 to 6 days", "4到6天"), ("2 to 4 days", "2到4天"))),
    _fact("express_fee", "delivery", ("¥25", "¥25"), """
        Do you have express delivery?
        How much is express shipping?
        What does next-day express cost?
        Can I pay for faster delivery?
        What is the price of express delivery?
        How much extra is express delivery?
        Is there an express option, and what does it cost?
        """, """
        有加急快递吗？
        加急配送多少钱？
        次日达快递怎么收费？
        想快点收到，可以加钱吗？
        特快配送的价格是多少？
        加急送货要多付多少钱？
        有没有加急服务，费用多少？
        """,
        ("Next-day express delivery costs {value}.", "Yes, express delivery is available for {value}."),
        ("次日达加急配送收费{value}。", "可以，加急配送费用是{value}。"),
        (("¥20", "¥20"), ("¥30", "¥30"), ("¥35", "¥35"), ("¥18", "¥18"))),
    _fact("delivery_courier", "delivery", ("Swallow Courier", "燕子快递"), """
        Which courier do you use?
        What delivery company ships my order?
        Who delivers your parcels?
        Which shipping company do you work with?
        What courier will bring my package?
        Which company delivers the orders?
        Who is your courier?
        """, """
        你们用哪家快递？
        发的是什么快递？
        包裹由哪家快递公司配送？
        你们合作的物流公司是哪家？
        用什么快递送货？
        快递公司是哪一家？
        我的包裹走哪个快递？
        """,
        ("We ship with {value}.", "All parcels are delivered by {value}."),
        ("我们使用{value}发货。", "所有包裹都由{value}配送。"),
        (("Crane Courier", "仙鹤快递"), ("Panda Post", "熊猫速递"),
         ("Blue Whale Logistics", "蓝鲸物流"), ("Fox Courier", "狐狸快递"))),

    # --- returns -----------------------------------------------------------------------
    _fact("return_window", "returns", ("15 days", "15天"), """
        What is your return policy?
        How long do I have to return an item?
        Can I return something I bought?
        How many days do I have to send something back?
        What is the return window?
        How many days do I have to return a product?
        How long is the return period?
        """, """
        退货政策是什么？
        买了多久之内可以退货？
        收到货后几天内能退？
        可以退货吗？
        退货期限是多久？
        多少天内可以退货？
        东西不想要了，多久内能退？
        """,
        ("You can return items within {value} of delivery.", "Our return window is {value}."),
        ("收货后{value}内可以退货。", "我们的退货期限是{value}。"),
        (("7 days", "7天"), ("10 days", "10天"), ("20 days", "20天"), ("14 days", "14天"))),
    _fact("refund_time", "returns", ("5 working days", "5个工作日"), """
        How long does a refund take?
        When will I get my money back?
        How soon are refunds processed?
        How many days until my refund arrives?
        After I return something, when is the refund paid?
        How long until I receive my refund?
        How quickly do you refund?
        """, """
        退款多久到账？
        什么时候能收到退款？
        退货以后钱多久退回来？
        退款需要几天？
        退款处理要多长时间？
        我的退款几天能到？
        钱多久能退给我？
        """,
        ("Refunds are paid within {value}.", "Your refund arrives within {value} after we receive the item."),
        ("退款会在{value}内到账。", "我们收到退货后，退款{value}内到账。"),
        (("3 working days", "3个工作日"), ("7 working days", "7个工作日"),
         ("10 working days", "10个工作日"), ("2 working days", "2个工作日"))),
    _fact("exchange_policy", "returns", ("30 days", "30天"), """
        Can I exchange an item?
        How long do I have to exchange something?
        What is your exchange policy?
        Can I swap a product for a different one?
        How many days do I have for an exchange?
        Is it possible to exchange my purchase, and until when?
        What's the time limit for exchanges?
        """, """
        可以换货吗？
        换货期限是多久？
        换货政策是什么？
        买错了能换别的吗？
        几天内可以换货？
        多久以内能换货？
        东西能换吗，换货有时间限制吗？
        """,
        ("You can exchange items within {value} of purchase.", "Exchanges are accepted for {value}."),
        ("购买后{value}内可以换货。", "换货期限是{value}。"),
        (("60 days", "60天"), ("45 days", "45天"), ("21 days", "21天"), ("90 days", "90天"))),
    _fact("return_condition", "returns", ("unopened", "未拆封"), """
        Can I return an opened item?
        What condition must returns be in?
        Do returned items have to be unused?
        Can I return tea that I have opened?
        What are the conditions for a return?
        What state should an item be in to return it?
        Will you accept a return if the package is opened?
        """, """
        拆封了还能退吗？
        退货商品有什么要求？
        用过的东西可以退吗？
        茶叶打开了能退货吗？
        退货需要满足什么条件？
        打开过的商品能退吗？
        退回的东西要是什么状态？
        """,
        ("Returned items must be {value}.", "We can only accept returns that are {value}."),
        ("退货商品必须{value}。", "只有{value}的商品才能退货。"),
        (("unused", "未使用"), ("undamaged", "完好无损"),
         ("in original packaging", "保留原包装"), ("sealed", "密封完好"))),

    # --- membership --------------------------------------------------------------------
    _fact("member_tiers", "membership", ("Silver, Gold and Diamond", "银卡、金卡和钻石卡"), """
        What membership levels do you have?
        What are the membership tiers?
        Do you have a membership program?
        Which member levels are there?
        How many membership tiers are there?
        Tell me about your membership levels.
        What membership tiers can I choose from?
        """, """
        会员有哪些等级？
        你们有会员制度吗？
        会员分几级？
        会员等级是怎么划分的？
        有什么会员类型？
        你们的会员等级有哪些？
        会员分为哪几种？
        """,
        ("We have three membership tiers: {value}.", "Our member levels are {value}."),
        ("我们有三个会员等级：{value}。", "会员等级分为{value}。"),
        (("Bronze, Silver and Gold", "铜卡、银卡和金卡"), ("Leaf, Branch and Tree", "叶卡、枝卡和树卡"),
         ("Basic, Plus and Premium", "普通卡、高级卡和尊享卡"), ("Star, Moon and Sun", "星卡、月卡和日卡"))),
    _fact("member_fee", "membership", ("¥69", "¥69"), """
        How much does membership cost?
        What is the fee for Gold membership?
        Is membership free?
        How much is the yearly membership fee?
        What do I pay to become a Gold member?
        What does a Gold membership cost per year?
        How much do I pay for membership?
        """, """
        会员费多少钱？
        金卡会员一年多少钱？
        办会员要交钱吗？
        会员年费是多少？
        成为金卡会员要付多少钱？
        金卡年费多少？
        开通会员需要多少钱？
        """,
        ("Gold membership costs {value} a year; Silver is free.", "The Gold membership fee is {value} per year."),
        ("金卡会员每年{value}，银卡免费。", "金卡年费是{value}。"),
        (("¥49", "¥49"), ("¥59", "¥59"), ("¥89", "¥89"), ("¥79", "¥79"))),
    _fact("member_discount_gold", "membership", ("10% off", "九折"), """
        What discount do Gold members get?
        How much do Gold members save?
        Is there a discount for Gold membership?
        What is the Gold member discount?
        Do Gold members get money off?
        How big is the discount for Gold members?
        As a Gold member, what discount do I get?
        """, """
        金卡会员打几折？
        金卡有什么折扣？
        金卡会员能优惠多少？
        金卡会员的折扣是多少？
        办了金卡买东西便宜多少？
        金卡会员享受什么折扣？
        我是金卡会员，可以打折吗？
        """,
        ("Gold members get {value} every purchase.", "The Gold member discount is {value}."),
        ("金卡会员全场{value}。", "金卡会员购物享受{value}优惠。"),
        (("15% off", "八五折"), ("5% off", "九五折"), ("6% off", "九四折"), ("8% off", "九二折"))),
    _fact("member_discount_diamond", "membership", ("20% off", "八折"), """
        What discount do Diamond members get?
        How much do Diamond members save?
        Is there a discount for Diamond membership?
        What is the Diamond member discount?
        Do Diamond members get money off?
        How big is the discount for Diamond members?
        As a Diamond member, what discount do I get?
        """, """
        钻石卡会员打几折？
        钻石卡有什么折扣？
        钻石卡会员能优惠多少？
        钻石卡会员的折扣是多少？
        办了钻石卡买东西便宜多少？
        钻石卡会员享受什么折扣？
        我是钻石卡会员，可以打折吗？
        """,
        ("Diamond members get {value} every purchase.", "The Diamond member discount is {value}."),
        ("钻石卡会员全场{value}。", "钻石卡会员购物享受{value}优惠。"),
        (("25% off", "七五折"), ("30% off", "七折"), ("18% off", "八二折"), ("35% off", "六五折"))),
    _fact("member_upgrade", "membership", ("¥2000", "¥2000"), """
        How do I become a Diamond member?
        How much do I need to spend for Diamond?
        What is required for Diamond membership?
        How can I upgrade to Diamond?
        What's the spending needed to reach Diamond level?
        What do I have to spend to get Diamond status?
        How do I reach the Diamond tier?
        """, """
        怎么成为钻石卡会员？
        消费多少可以升级钻石卡？
        钻石卡会员的条件是什么？
        怎样升级到钻石卡？
        一年要花多少钱才能成为钻石卡？
        升钻石卡需要消费多少？
        达到什么条件能拿到钻石卡？
        """,
        ("You become a Diamond member after spending {value} in one year.",
         "Diamond status requires {value} of spending per year."),
        ("一年内累计消费{value}即可成为钻石卡会员。", "升级钻石卡需要一年消费满{value}。"),
        (("¥1500", "¥1500"), ("¥3000", "¥3000"), ("¥2500", "¥2500"), ("¥5000", "¥5000"))),
    _fact("member_points", "membership", ("1 point per ¥10", "每¥10积1分"), """
        How do points work?
        How many points do I earn?
        Do I get points when I shop?
        What is the points rate for members?
        How are member points earned?
        How many points do I get for my purchases?
        How do I collect points?
        """, """
        积分怎么算？
        买东西能攒积分吗？
        消费多少钱积一分？
        会员积分规则是什么？
        购物怎么获得积分？
        我购物能得多少积分？
        积分是怎么累积的？
        """,
        ("Members earn {value} spent.", "You get {value} you spend."),
        ("会员消费{value}。", "积分规则是{value}。"),
        (("1 point per ¥5", "每¥5积1分"), ("2 points per ¥10", "每¥10积2分"),
         ("1 point per ¥20", "每¥20积1分"), ("3 points per ¥10", "每¥10积3分"))),
    _fact("member_points_expiry", "membership", ("12 months", "12个月"), """
        Do my points expire?
        How long are points valid?
        When do member points expire?
        How long can I keep my points?
        Is there an expiry date on points?
        For how long can I use my points?
        What is the validity of member points?
        """, """
        积分会过期吗？
        积分有效期多久？
        积分多久失效？
        攒的积分能保留多长时间？
        会员积分有期限吗？
        我的积分能用多久？
        积分什么时候到期？
        """,
        ("Points are valid for {value}.", "Member points expire after {value}."),
        ("积分有效期为{value}。", "会员积分{value}后过期。"),
        (("6 months", "6个月"), ("18 months", "18个月"), ("24 months", "24个月"), ("3 months", "3个月"))),
    _fact("member_birthday", "membership", ("double points", "双倍积分"), """
        Do members get a birthday gift?
        What do I get on my birthday?
        Is there a birthday treat for members?
        What's the member birthday benefit?
        Do you give anything for birthdays?
        What happens in my birthday month as a member?
        Any birthday perks for members?
        """, """
        会员生日有礼物吗？
        生日当月有什么福利？
        过生日有优惠吗？
        会员生日特权是什么？
        生日的时候有什么好处？
        会员过生日能得到什么？
        生日月份有什么会员权益？
        """,
        ("In your birthday month you earn {value}.", "Members get {value} during their birthday month."),
        ("生日当月可以获得{value}。", "会员生日月享受{value}。"),
        (("triple points", "三倍积分"), ("a ¥20 coupon", "一张¥20优惠券"),
         ("a free tea sample", "一份免费茶样"), ("five times points", "五倍积分"))),

    # --- locations (the three store addresses come from _STORES) ---------------------------
    _fact("store_count", "locations", ("3 stores", "3家门店"), """
        How many stores do you have?
        How many shops does Maple Leaf have?
        How many branches are there?
        Do you have more than one store?
        How many locations do you have?
        How many stores does the shop have?
        How many physical shops are there?
        """, """
        你们有几家店？
        一共有多少家门店？
        有几个分店？
        你们的实体店有几家？
        门店数量是多少？
        枫叶小铺开了几家店？
        总共有几家分店？
        """,
        ("We have {value} in the city.", "There are {value} in total."),
        ("我们在本市有{value}。", "一共有{value}。"),
        (("4 stores", "4家门店"), ("5 stores", "5家门店"), ("2 stores", "2家门店"), ("6 stores", "6家门店"))),
    _fact("parking", "locations", ("2 hours of free parking", "免费停车2小时"), """
        Is there parking at your stores?
        Can I park for free?
        Do you have a car park?
        How long can I park for free?
        Where can I park when I visit?
        Is parking free when I shop with you?
        Do your stores offer free parking?
        """, """
        门店有停车位吗？
        停车免费吗？
        开车去方便停车吗？
        可以免费停多久？
        店里有停车场吗？
        去店里停车要收费吗？
        有没有免费停车？
        """,
        ("Customers get {value} at every store.", "Every store offers {value}."),
        ("顾客在每家门店都可以{value}。", "每家门店都提供{value}。"),
        (("1 hour of free parking", "免费停车1小时"), ("3 hours of free parking", "免费停车3小时"),
         ("30 minutes of free parking", "免费停车30分钟"), ("4 hours of free parking", "免费停车4小时"))),

    # --- contact -----------------------------------------------------------------------
    _fact("phone", "contact", ("400-820-6688", "400-820-6688"), """
        What is your phone number?
        How can I call you?
        What number do I call for customer service?
        Do you have a hotline?
        Can I reach you by phone?
        Which number should I call for help?
        What's the customer service hotline?
        """, """
        你们的电话是多少？
        客服电话多少？
        怎么打电话联系你们？
        有热线电话吗？
        打哪个号码找客服？
        联系电话是多少？
        我想打电话咨询，号码是多少？
        """,
        ("You can call us at {value}.", "Our customer service hotline is {value}."),
        ("您可以拨打{value}联系我们。", "我们的客服热线是{value}。"),
        (("400-820-7799", "400-820-7799"), ("400-668-1234", "400-668-1234"),
         ("400-123-8866", "400-123-8866"), ("400-900-5566", "400-900-5566"))),
    _fact("email", "contact", ("help@mapleleaf.shop", "help@mapleleaf.shop"), """
        What is your email address?
        How can I email you?
        Where do I send an email?
        Do you have a customer service email?
        Can I contact you by email?
        Which email address should I write to?
        What email can I write to?
        """, """
        你们的邮箱是什么？
        客服邮箱地址是多少？
        怎么发邮件联系你们？
        可以用电子邮件联系吗？
        邮件要发到哪里？
        电子邮箱地址是什么？
        我想写邮件给客服，发到哪个邮箱？
        """,
        ("You can email us at {value}.", "Our email address is {value}."),
        ("您可以发邮件到{value}。", "我们的客服邮箱是{value}。"),
        (("service@mapleleaf.shop", "service@mapleleaf.shop"), ("hello@mapleleaf.shop", "hello@mapleleaf.shop"),
         ("support@mapleleaf.shop", "support@mapleleaf.shop"), ("care@mapleleaf.shop", "care@mapleleaf.shop"))),
    _fact("chat_hours", "contact", ("8am to 10pm", "早上8点到晚上10点"), """
        When is online chat available?
        What are your WeChat service hours?
        What time can I chat with customer service online?
        When is online support open?
        What are the live chat hours?
        Until what time is online chat open?
        When can I reach online customer service?
        """, """
        在线客服几点上班？
        微信客服什么时候在线？
        网上咨询的时间是几点到几点？
        在线客服服务时间是多少？
        几点可以在微信上找客服？
        线上客服的工作时间是？
        微信咨询几点到几点有人回复？
        """,
        ("Online chat and WeChat service are available {value}.", "Our online customer service works {value} every day."),
        ("在线客服和微信客服的服务时间是{value}。", "在线客服每天{value}在线。"),
        (("9am to midnight", "早上9点到午夜12点"), ("8am to 11pm", "早上8点到晚上11点"),
         ("7am to 10pm", "早上7点到晚上10点"), ("10am to 11pm", "早上10点到晚上11点"))),
    _fact("wechat_id", "contact", ("MapleLeafTea", "MapleLeafTea"), """
        What is your WeChat account?
        How do I find you on WeChat?
        What's your WeChat ID?
        Do you have an official WeChat account?
        Which WeChat account should I follow?
        What name do I search for on WeChat?
        How can I add you on WeChat?
        """, """
        你们的微信号是什么？
        微信公众号叫什么？
        怎么在微信上找到你们？
        有官方微信吗？
        关注哪个微信号？
        微信上搜什么能找到你们？
        怎么加你们的微信？
        """,
        ("Search for {value} on WeChat.", "Our WeChat account is {value}."),
        ("在微信搜索{value}就能找到我们。", "我们的微信号是{value}。"),
        (("MapleLeafShop", "MapleLeafShop"), ("MapleTeaHouse", "MapleTeaHouse"),
         ("LeafAndCup", "LeafAndCup"), ("MapleLeafCare", "MapleLeafCare"))),
    _fact("email_response", "contact", ("within 24 hours", "24小时内"), """
        How fast do you reply to emails?
        When will I get an answer to my email?
        How long does it take you to respond to email?
        How quickly does customer service answer emails?
        I sent an email, when will you reply?
        How soon can I expect an email reply?
        How long until you reply to my email?
        """, """
        邮件多久回复？
        发了邮件什么时候能收到回复？
        客服回邮件要多长时间？
        邮件咨询多快能得到答复？
        给你们发邮件，多久回？
        邮件一般多久能回？
        我发的邮件什么时候有回音？
        """,
        ("We reply to emails {value}.", "Customer service answers every email {value}."),
        ("我们会在{value}回复邮件。", "客服会在{value}答复每一封邮件。"),
        (("within 48 hours", "48小时内"), ("within 8 hours", "8小时内"),
         ("within 36 hours", "36小时内"), ("within 12 hours", "12小时内"))),

    # --- payment -----------------------------------------------------------------------
    _fact("payment_methods", "payment", ("cash, card, WeChat Pay and Alipay", "现金、银行卡、微信支付和支付宝"), """
        What payment methods do you accept?
        How can I pay?
        Do you take WeChat Pay?
        Can I pay by card?
        Which ways of paying are accepted?
        What ways to pay do you accept?
        Do you accept Alipay or cash?
        """, """
        可以用什么方式付款？
        支持哪些支付方式？
        能用微信支付吗？
        可以刷卡吗？
        付款方式有哪些？
        你们收支付宝还是现金？
        买东西可以用哪些方式付款？
        """,
        ("We accept {value}.", "You can pay with {value}."),
        ("我们支持{value}。", "您可以使用{value}付款。"),
        (("WeChat Pay and Alipay only", "仅限微信支付和支付宝"), ("cash and card only", "仅限现金和银行卡"),
         ("card, Alipay and PayPal", "银行卡、支付宝和PayPal"), ("cash, WeChat Pay and UnionPay", "现金、微信支付和银联"))),
    _fact("installments", "payment", ("3 interest-free installments", "3期免息"), """
        Can I pay in installments?
        Do you offer interest-free installments?
        Is there a payment plan for big orders?
        Can I split my payment?
        How many installments can I pay in?
        Is paying in installments possible?
        Can I pay for an order in installments without interest?
        """, """
        可以分期付款吗？
        支持免息分期吗？
        大额订单能分期吗？
        付款可以分几期？
        有分期付款服务吗？
        买东西能不能分期？
        分期有利息吗？
        """,
        ("You can pay in {value}.", "We offer {value} on larger orders."),
        ("您可以选择{value}。", "大额订单支持{value}。"),
        (("6 interest-free installments", "6期免息"), ("12 interest-free installments", "12期免息"),
         ("2 interest-free installments", "2期免息"), ("4 interest-free installments", "4期免息"))),
    _fact("invoice", "payment", ("e-invoices", "电子发票"), """
        Can I get an invoice?
        Do you issue invoices?
        How do I get a receipt for my order?
        What kind of invoice do you provide?
        Can you give me an invoice for my company?
        Is an invoice available for my purchase?
        Do you provide invoices?
        """, """
        可以开发票吗？
        你们提供发票吗？
        怎么开发票？
        开的是什么发票？
        公司报销能开发票吗？
        买东西能要发票吗？
        发票怎么开具？
        """,
        ("Yes, we issue {value} by email.", "We provide {value} for every order."),
        ("可以，我们通过邮件开具{value}。", "每笔订单都可以开{value}。"),
        (("paper invoices", "纸质发票"), ("VAT invoices", "增值税发票"),
         ("paper receipts", "纸质收据"), ("digital receipts", "电子收据"))),

    # --- gift cards --------------------------------------------------------------------
    _fact("giftcard_amounts", "gift_cards", ("¥100, ¥300 and ¥500", "¥100、¥300和¥500"), """
        Do you sell gift cards?
        What gift card amounts are there?
        How much are your gift cards?
        Can I buy a gift card?
        What values do gift cards come in?
        Which gift card values can I choose?
        Are gift cards available, and for how much?
        """, """
        有礼品卡吗？
        礼品卡有哪些面额？
        礼品卡多少钱一张？
        可以买礼品卡吗？
        礼品卡面值有几种？
        你们卖礼品卡吗？
        礼品卡的面额是多少？
        """,
        ("Gift cards come in {value}.", "You can buy gift cards of {value}."),
        ("礼品卡有{value}三种面额。", "我们提供{value}的礼品卡。"),
        (("¥50, ¥100 and ¥200", "¥50、¥100和¥200"), ("¥200, ¥400 and ¥800", "¥200、¥400和¥800"),
         ("¥150, ¥250 and ¥350", "¥150、¥250和¥350"), ("¥100, ¥200 and ¥1000", "¥100、¥200和¥1000"))),
    _fact("giftcard_validity", "gift_cards", ("3 years", "3年"), """
        How long is a gift card valid?
        Do gift cards expire?
        When does my gift card expire?
        How long can I use a gift card?
        What is the gift card validity?
        Is there an expiry date on gift cards?
        For how long does a gift card work?
        """, """
        礼品卡有效期多久？
        礼品卡会过期吗？
        礼品卡能用多长时间？
        礼品卡什么时候失效？
        礼品卡的使用期限是多久？
        礼品卡可以用几年？
        我的礼品卡多久过期？
        """,
        ("Gift cards are valid for {value}.", "A gift card expires after {value}."),
        ("礼品卡有效期为{value}。", "礼品卡{value}后过期。"),
        (("5 years", "5年"), ("18 months", "18个月"), ("4 years", "4年"), ("10 years", "10年"))),

    # --- warranty ----------------------------------------------------------------------
    _fact("warranty_teapot", "warranty", ("1 year", "1年"), """
        Is there a warranty on teapots?
        How long is the teapot warranty?
        What if my teapot breaks?
        Do teapots come with a guarantee?
        What warranty do you give on teapots?
        How long are teapots covered?
        My teapot is faulty, is it under warranty?
        """, """
        茶壶保修多久？
        茶壶有质保吗？
        茶壶坏了怎么办？
        茶壶的保修期是多长时间？
        买的茶壶保不保修？
        茶壶质保期多长？
        茶壶出了问题能保修吗？
        """,
        ("Teapots are under warranty for {value}.", "Every teapot is covered for {value}."),
        ("茶壶保修{value}。", "所有茶壶提供{value}质保。"),
        (("18 months", "18个月"), ("6 months", "6个月"), ("3 months", "3个月"), ("5 years", "5年"))),
    _fact("warranty_kettle", "warranty", ("2 years", "2年"), """
        Is there a warranty on electric kettles?
        How long is the kettle warranty?
        What if my electric kettle breaks?
        Do kettles come with a guarantee?
        What warranty do you give on kettles?
        How long are kettles covered?
        My kettle is faulty, is it under warranty?
        """, """
        电热水壶保修多久？
        热水壶有质保吗？
        电热水壶坏了怎么办？
        热水壶的保修期是多长时间？
        买的电热水壶保不保修？
        电热水壶质保期多长？
        热水壶出了问题能保修吗？
        """,
        ("Electric kettles are under warranty for {value}.", "Every kettle is covered for {value}."),
        ("电热水壶保修{value}。", "所有电热水壶提供{value}质保。"),
        (("18 months", "18个月"), ("30 months", "30个月"), ("4 years", "4年"), ("6 months", "6个月"))),

    # --- about -------------------------------------------------------------------------
    _fact("founded", "about", ("2012", "2012年"), """
        When was the shop founded?
        How old is Maple Leaf Shop?
        What year did you open?
        When did Maple Leaf Shop start?
        How long have you been in business?
        In which year was the shop started?
        Since what year has the shop been open?
        """, """
        小铺是哪年成立的？
        枫叶小铺开了多少年了？
        你们哪一年开业的？
        枫叶小铺什么时候创立的？
        店开了多久了？
        这家店是什么时候开的？
        枫叶小铺成立于哪一年？
        """,
        ("Maple Leaf Shop was founded in {value}.", "We opened our first store in {value}."),
        ("枫叶小铺成立于{value}。", "我们在{value}开了第一家店。"),
        (("2008", "2008年"), ("2015", "2015年"), ("2010", "2010年"), ("2018", "2018年"))),
    _fact("founder", "about", ("Lin Mei", "林梅"), """
        Who founded the shop?
        Who is the owner of Maple Leaf Shop?
        Who started Maple Leaf Shop?
        Who runs the shop?
        Who is the founder?
        Who set up the shop?
        What is the name of the founder?
        """, """
        小铺是谁创办的？
        枫叶小铺的老板是谁？
        谁开了这家店？
        店主叫什么名字？
        创始人是谁？
        这家店的创始人叫什么？
        枫叶小铺是谁开的？
        """,
        ("The shop was founded by {value}.", "Our founder is {value}."),
        ("小铺由{value}创办。", "我们的创始人是{value}。"),
        (("Zhang Wei", "张伟"), ("Chen Jing", "陈静"), ("Wang Fang", "王芳"), ("Zhao Lei", "赵磊"))),
    _fact("tea_origin", "about", ("Fujian and Yunnan", "福建和云南"), """
        Where does your tea come from?
        Where is your tea grown?
        What region is the tea from?
        Where do you source your tea?
        Which provinces does your tea come from?
        Where are your tea leaves from?
        What is the origin of your tea?
        """, """
        你们的茶叶产自哪里？
        茶是从哪里来的？
        茶叶的产地是哪儿？
        你们在哪里采购茶叶？
        茶叶来自哪些省份？
        这些茶是哪里产的？
        你们卖的茶产地在哪？
        """,
        ("Our tea comes from {value}.", "All our tea is grown in {value}."),
        ("我们的茶叶产自{value}。", "所有茶叶都来自{value}。"),
        (("Zhejiang and Anhui", "浙江和安徽"), ("Sichuan and Guizhou", "四川和贵州"),
         ("Hunan and Jiangxi", "湖南和江西"), ("Guangdong and Guangxi", "广东和广西"))),

    # --- services ----------------------------------------------------------------------
    _fact("gift_wrap", "services", ("¥15", "¥15"), """
        Do you offer gift wrapping?
        How much is gift wrapping?
        Can you wrap my order as a gift?
        What does gift wrap cost?
        Is gift wrapping available?
        Can I get my purchase gift-wrapped, and for how much?
        What's the price of wrapping a gift?
        """, """
        可以礼品包装吗？
        礼品包装多少钱？
        能帮我把东西包成礼物吗？
        包装成礼物要加钱吗？
        有礼品包装服务吗？
        礼品包装怎么收费？
        帮忙包装礼物收多少钱？
        """,
        ("Gift wrapping is available for {value}.", "We wrap any order as a gift for {value}."),
        ("礼品包装收费{value}。", "任何订单都可以礼品包装，费用{value}。"),
        (("¥10", "¥10"), ("¥20", "¥20"), ("¥12", "¥12"), ("¥18", "¥18"))),
    _fact("tea_tasting", "services", ("every Saturday at 3pm", "每周六下午3点"), """
        Do you hold tea tastings?
        When is the free tea tasting?
        Can I try tea before buying?
        Is there a tea tasting event?
        What time is the tasting session?
        When can I join a tea tasting?
        Do you have tasting events, and when?
        """, """
        有品茶活动吗？
        免费试茶是什么时候？
        买之前能先尝尝茶吗？
        店里有试饮活动吗？
        品茶会几点开始？
        什么时候可以参加品茶？
        你们的试茶活动在哪天？
        """,
        ("We hold a free tea tasting {value}.", "Join our tea tasting {value} at any store."),
        ("我们{value}举办免费品茶会。", "每家门店{value}都有品茶活动。"),
        (("every Sunday at 2pm", "每周日下午2点"), ("every Friday at 7pm", "每周五晚上7点"),
         ("every Saturday at 10am", "每周六上午10点"), ("every Wednesday at 4pm", "每周三下午4点"))),
)


# More training phrasings per fact (questions 6-10 of each block above would not fit the
# "last two are held out" layout, so they live here and are inserted before the held-out
# pair by _with_more_phrasings). Five training phrasings per fact left a ~1M-parameter model
# mixing up facts that share words (return window vs exchange period); ten generalize
# better to the held-out phrasings. None of these restates a held-out phrasing.
_MORE_TRAIN = {
    "hours_weekday": ("""
        When do you open on a normal working day?
        What time do you close on a Tuesday?
        Is the shop open on Wednesday evening, and until when?
        What are the opening times during the week?
        I want to visit on Thursday, what time are you open?
        """, """
        星期三几点关门？
        平日的营业时间是怎样的？
        周二晚上还开着吗，几点关门？
        礼拜一到礼拜五几点营业？
        我想周四去店里，几点开门？
        """),
    "hours_weekend": ("""
        What time do you close on Sunday?
        I want to come on Saturday, what time are you open?
        When do you open on a Sunday morning?
        What are the opening times at the weekend?
        Is the shop open on Saturday evening, and until when?
        """, """
        星期天几点关门？
        周六上午几点开门？
        我想星期六去店里，几点营业？
        礼拜天开门吗，营业到几点？
        周末的营业时间是怎样的？
        """),
    "holiday_closure": ("""
        Do you take any days off during the year?
        Will you be open during Chinese New Year?
        Which days of the year is the store closed?
        Are you open on public holidays?
        Do you close for the New Year holiday?
        """, """
        过年放假吗？
        一年中哪几天不开门？
        法定节假日照常营业吗？
        春节放假到哪天？
        大年初一开门吗？
        """),
    "delivery_fee": ("""
        How much do you charge to deliver an order?
        What is the shipping charge per order?
        Do I have to pay for standard shipping?
        What is the postage for a normal order?
        How much is the regular delivery charge?
        """, """
        运费怎么收？
        一单要付几块钱运费？
        普通送货收费多少？
        快递费要多少钱？
        下单要另外付运费吗？
        """),
    "free_delivery": ("""
        Is there free shipping?
        Above what amount is delivery free?
        How much must I order to avoid the delivery fee?
        Can I get delivery for free?
        What is the free shipping threshold?
        """, """
        有没有包邮？
        买够多少钱不要运费？
        包邮门槛是多少？
        运费可以免吗？
        消费满多少送货免费？
        """),
    "delivery_same_city": ("""
        How long does delivery take in this city?
        I live locally, how soon can I get my order?
        What is the delivery time within the city?
        How many hours does local delivery take?
        If I order today in the city, when does it come?
        """, """
        同城送货要几个小时？
        我住在本市，多久能收到？
        市区内送货需要多久？
        同城配送的时间是多少？
        在本市下单多快能送到？
        """),
    "delivery_other_cities": ("""
        How long does shipping to another province take?
        I live in a different city, how long will delivery take?
        What is the delivery time outside the city?
        How many days for a parcel to reach another city?
        How long to ship an order out of town?
        """, """
        外省送货要几天？
        我在外地，快递几天能到？
        寄到外地需要多长时间？
        外地发货多少天送达？
        不在本市的话要等几天？
        """),
    "express_fee": ("""
        What is the express delivery fee?
        How much does next-day delivery cost?
        I need it tomorrow, what does express cost?
        What is the charge for fast shipping?
        Do you have next-day shipping, and at what price?
        """, """
        加急费是多少？
        次日达多少钱？
        我明天就要，加急要多少钱？
        快速配送怎么收费？
        特快送货费用是多少？
        """),
    "delivery_courier": ("""
        Which courier company do you ship with?
        What express company sends the parcels?
        Who brings the packages to customers?
        Which logistics company handles delivery?
        What courier service do you use for orders?
        """, """
        你们发什么快递公司？
        包裹是哪家物流送的？
        用的是哪个快递？
        送货的是哪家公司？
        你们跟哪家快递合作？
        """),
    "return_window": ("""
        How long can I wait before returning something?
        Until when can I return an item?
        What is the deadline for returning an item?
        Can I still return an item I got two weeks ago?
        How long after delivery can I return my order?
        """, """
        退货有时间限制吗？
        收货多久以后就不能退了？
        退货的期限有几天？
        买了两周还能退货吗？
        要在几天之内申请退货？
        """),
    "refund_time": ("""
        When does the refund reach my account?
        How many working days does a refund take?
        I returned an item, how soon do I get paid back?
        How long do refunds need to go through?
        What is the refund processing time?
        """, """
        退款几个工作日到账？
        退货后多久拿到退款？
        退的钱什么时候到我账上？
        退款要等多久？
        申请退款后几天到账？
        """),
    "exchange_policy": ("""
        How many days can I wait before exchanging an item?
        Can I change an item for another size or color?
        What is the deadline for an exchange?
        Until when can I swap what I bought?
        How long after buying can I exchange something?
        """, """
        换货要在几天内办理？
        买了东西想换一个，可以吗？
        换货的期限有几天？
        过了多久就不能换货了？
        不合适能换吗，多少天内？
        """),
    "return_condition": ("""
        Do I need to keep the item sealed to return it?
        Can I send back a product I already used?
        What are the requirements for returning something?
        Is it okay to return a box I have unpacked?
        Must a return be in its original state?
        """, """
        退货要求是什么？
        已经拆开的东西还能退吗？
        喝过的茶叶能退吗？
        退货时包装要完好吗？
        什么样的商品可以退？
        """),
    "member_tiers": ("""
        How many member levels are there and what are they called?
        What kinds of membership do you offer?
        What are the names of the member tiers?
        Is there more than one membership level?
        What member ranks can I have?
        """, """
        会员卡有几种？
        会员级别有哪些？
        会员等级叫什么名字？
        会员有不同级别吗？
        有哪几种会员卡？
        """),
    "member_fee": ("""
        Do I have to pay to join as a member?
        What is the annual fee for members?
        How much does a Gold card cost?
        Is there a charge for becoming a member?
        What is the price of joining the membership?
        """, """
        入会要交多少钱？
        办金卡要多少钱？
        会员每年收费多少？
        当会员收费吗？
        金卡会员费是多少？
        """),
    "member_discount_gold": ("""
        Do Gold card holders get a discount?
        How much off do Gold members get?
        What price reduction comes with a Gold card?
        I have a Gold card, how much do I save?
        What percentage off is the Gold discount?
        """, """
        金卡能打折吗？
        金卡会员买东西优惠多少？
        拿金卡购物打几折？
        金卡的优惠是多少？
        持金卡能便宜多少？
        """),
    "member_discount_diamond": ("""
        Do Diamond card holders get a discount?
        How much off do Diamond members get?
        What price reduction comes with a Diamond card?
        I have a Diamond card, how much do I save?
        What percentage off is the Diamond discount?
        """, """
        钻石卡能打折吗？
        钻石卡会员买东西优惠多少？
        拿钻石卡购物打几折？
        钻石卡的优惠是多少？
        持钻石卡能便宜多少？
        """),
    "member_upgrade": ("""
        What spending gets me a Diamond card?
        How much must I buy in a year to become Diamond?
        What are the Diamond membership requirements?
        Can I get a Diamond card, and how?
        How do I move up to Diamond level?
        """, """
        钻石卡怎么办？
        消费满多少能升钻石卡？
        钻石卡会员要满足什么要求？
        钻石卡要怎么申请？
        一年买多少钱可以变成钻石卡？
        """),
    "member_points": ("""
        How are points calculated?
        How much do I need to spend for one point?
        What is the points rule for shopping?
        Do purchases earn member points?
        How fast do I earn points?
        """, """
        积分规则是怎样的？
        花多少钱能得一分？
        购物积分怎么计算？
        消费能积分吗？
        每花一块钱有积分吗？
        """),
    "member_points_expiry": ("""
        Will my points run out after some time?
        How long before points expire?
        Do unused points disappear?
        What is the expiry period for points?
        Are points valid forever?
        """, """
        积分多长时间清零？
        积分的有效期是多少？
        没用的积分会作废吗？
        积分可以一直保留吗？
        积分过多久就没了？
        """),
    "member_birthday": ("""
        Is there a birthday bonus?
        What do members receive for their birthday?
        Do I get anything special on my birthday?
        What is the birthday reward?
        Is there a birthday benefit for members?
        """, """
        生日有什么奖励？
        会员生日送什么？
        过生日有特别福利吗？
        生日那个月能享受什么？
        会员生日有积分活动吗？
        """),
    "store_count": ("""
        How many Maple Leaf stores are there?
        What is the number of your stores?
        Do you have several branches?
        How many places can I visit you?
        In total, how many shops do you run?
        """, """
        店一共几家？
        你们开了多少家分店？
        门店有多少个？
        你们有好几家店吗？
        线下店总共多少家？
        """),
    "parking": ("""
        Can I park my car at the store?
        Is there free parking?
        How long is parking free?
        If I drive, where do I park?
        Do I pay for parking at the store?
        """, """
        能在店门口停车吗？
        停车能免费多久？
        开车去店里停哪里？
        停车场收费吗？
        门店停车方便吗？
        """),
    "phone": ("""
        What number can I ring?
        Can you give me your telephone number?
        How do I contact you by phone?
        Is there a number I can dial?
        What is the service phone number?
        """, """
        电话号码是什么？
        怎么电话联系客服？
        客服热线多少？
        能给我一个电话号码吗？
        打电话找你们拨什么号？
        """),
    "email": ("""
        What is the customer service email?
        Can you give me your email?
        How do I reach you by email?
        Is there an email for support?
        Where can I send my questions by email?
        """, """
        邮箱地址给我一下？
        客服的电子邮件是什么？
        有邮箱可以联系吗？
        发邮件用哪个地址？
        能告诉我邮箱吗？
        """),
    "chat_hours": ("""
        What hours is the online chat open?
        When does online customer service start and finish?
        Can I chat with you online at night?
        What time does WeChat service close?
        When are online agents available?
        """, """
        网上客服几点下班？
        在线咨询几点开始？
        晚上还能在线找客服吗？
        微信客服几点下线？
        在线客服什么时间有人？
        """),
    "wechat_id": ("""
        What is your WeChat name?
        Can you tell me your WeChat account name?
        Which account do I follow on WeChat?
        Are you on WeChat, and under what name?
        What WeChat account do you use?
        """, """
        微信账号是多少？
        你们在微信上叫什么？
        公众号名称是什么？
        微信号能告诉我吗？
        我要关注你们，微信号是？
        """),
    "email_response": ("""
        How long do email answers take?
        Do you answer emails quickly?
        What is the reply time for emails?
        I wrote to you by email, when do I hear back?
        How many hours until an email is answered?
        """, """
        邮件回复要多久？
        给客服写信多久回？
        邮件的回复时间是多少？
        发邮件后要等多久？
        邮件咨询几个小时内回复？
        """),
    "payment_methods": ("""
        Which payment options are there?
        How do I pay for my order?
        Can I use a bank card to pay?
        Is paying with a phone app possible?
        What can I pay with at the till?
        """, """
        怎么付钱？
        可以用银行卡付吗？
        付款支持什么方式？
        能扫码支付吗？
        结账能用什么付？
        """),
    "installments": ("""
        Do you have installment plans?
        Can I spread the payment over several months?
        How many interest-free payments can I make?
        Is there an installment option for expensive items?
        Can I pay a little each month?
        """, """
        能分几期付款？
        分期付款要手续费吗？
        贵的东西可以分期吗？
        可以按月付款吗？
        有免息分期的选项吗？
        """),
    "invoice": ("""
        Can you send me an invoice?
        What type of invoice will I get?
        Do I get an invoice with my order?
        I need an invoice for work, can you issue one?
        How is the invoice sent?
        """, """
        能给我开张发票吗？
        发票是什么类型的？
        订单有发票吗？
        报销需要发票，可以开吗？
        发票怎么给我？
        """),
    "giftcard_amounts": ("""
        What are the gift card options?
        How much can a gift card be worth?
        Is there a gift card I can give a friend?
        What sizes do gift cards come in?
        Do you have gift cards for sale?
        """, """
        礼品卡有几种面值？
        礼品卡最多多少钱？
        想送朋友礼品卡，有哪些面额？
        礼品卡都有多少钱的？
        能买礼品卡送人吗？
        """),
    "giftcard_validity": ("""
        How many years is a gift card good for?
        Will my gift card run out?
        What is the expiry period of a gift card?
        Can I still use an old gift card?
        Is a gift card good forever?
        """, """
        礼品卡过多久就不能用了？
        礼品卡的有效期是几年？
        旧的礼品卡还能用吗？
        礼品卡有使用期限吗？
        礼品卡能保存多久？
        """),
    "warranty_teapot": ("""
        What is the guarantee on a teapot?
        Can you repair a broken teapot for free?
        How long does a teapot warranty last?
        Is my glass teapot guaranteed?
        Are teapots under warranty?
        """, """
        茶壶保修期是多久？
        玻璃茶壶坏了能免费修吗？
        茶壶保修几年？
        茶壶有保修吗？
        茶壶质量问题怎么处理？
        """),
    "warranty_kettle": ("""
        What is the guarantee on a kettle?
        Can you repair a broken kettle for free?
        How long does a kettle warranty last?
        Is my electric kettle guaranteed?
        Are electric kettles under warranty?
        """, """
        电热水壶保修期是多久？
        热水壶坏了能免费修吗？
        电热水壶保修几年？
        电热水壶有保修吗？
        热水壶质量问题怎么处理？
        """),
    "founded": ("""
        What year was Maple Leaf Shop founded?
        How many years has the shop been around?
        When did you first open?
        When was your first store opened?
        Is Maple Leaf Shop a new shop?
        """, """
        哪年开的第一家店？
        你们开店多少年了？
        枫叶小铺有多少年历史？
        最早是哪年开业的？
        小铺创立的年份是？
        """),
    "founder": ("""
        Who created Maple Leaf Shop?
        Whose shop is this?
        Who opened the first store?
        Who is the boss of the shop?
        Can you tell me who the founder is?
        """, """
        老板叫什么？
        谁创立了枫叶小铺？
        这家店是谁的？
        小铺的主人是谁？
        第一家店的创办人是谁？
        """),
    "tea_origin": ("""
        Which region grows your tea?
        Where do the teas you sell come from?
        In which provinces is your tea grown?
        Is your tea from Fujian?
        Where is the tea produced?
        """, """
        茶叶是哪个省的？
        你们的茶在哪里种的？
        茶叶从哪些地方进货？
        茶是云南的吗？
        茶叶出产在什么地方？
        """),
    "gift_wrap": ("""
        Can you wrap a present for me?
        What is the charge for gift wrap?
        Do you wrap gifts?
        How much extra to have it wrapped?
        I want it wrapped as a present, what does that cost?
        """, """
        能帮忙包装成礼品吗？
        礼品包装费是多少？
        可以包成礼物送人吗？
        包装一下要多少钱？
        送人的话能包装吗，多少钱？
        """),
    "tea_tasting": ("""
        Is there a free tasting?
        When do you hold tea tastings?
        Can I taste some tea in the store?
        What day is the tea tasting?
        How often is there a tasting?
        """, """
        品茶会在星期几？
        店里可以免费品茶吗？
        试饮活动几点？
        品茶会多久举办一次？
        周几有品茶？
        """),
}


def _with_more_phrasings(fact: Fact) -> Fact:
    extra = _MORE_TRAIN.get(fact.key)
    if extra is None:
        return fact
    return dataclasses.replace(fact, questions_en=_insert_train(fact.questions_en, _lines(extra[0])),
                               questions_zh=_insert_train(fact.questions_zh, _lines(extra[1])))


TOPIC_NAMES = {   # topic -> (English, Chinese) name, used for FAQ headings in the pretraining text
    "hours": ("opening hours", "营业时间"), "prices": ("prices", "价格"), "delivery": ("delivery", "配送"),
    "returns": ("returns and exchanges", "退换货"), "membership": ("membership", "会员"),
    "locations": ("stores", "门店"), "contact": ("contact", "联系方式"), "payment": ("payment", "付款"),
    "gift_cards": ("gift cards", "礼品卡"), "warranty": ("warranty", "保修"), "about": ("about us", "关于我们"),
    "services": ("services", "服务"),
}
TOPICS: tuple[str, ...] = tuple(TOPIC_NAMES)
FACTS: tuple[Fact, ...] = tuple(sorted(   # stable sort: grouped by topic, table order within a topic
    tuple(_price_fact(i, *p) for i, p in enumerate(_PRODUCTS))
    + tuple(_store_fact(i, *s) for i, s in enumerate(_STORES))
    + tuple(_with_more_phrasings(f) for f in _HAND_WRITTEN),
    key=lambda f: TOPICS.index(f.topic)))
FACTS_BY_KEY: dict[str, Fact] = {f.key: f for f in FACTS}


# ---------------------------------------------------------------------------------------
# Small talk: greetings, thanks, "what can you do", goodbyes
# ---------------------------------------------------------------------------------------

SMALL_TALK = {
    "en": {
        "greet": (("Hi", "Hello", "Hello there!", "Hi, anyone there?", "Good morning", "Hey"),
                  ("Hello! Welcome to Maple Leaf Shop. How can I help you?", "Hi! How can I help you today?")),
        "thanks": (("Thanks!", "Thank you.", "Great, thanks.", "Thanks a lot!", "OK, thank you."),
                   ("You're welcome! Anything else?", "Happy to help!")),
        "abilities": (("What can you do?", "How can you help me?", "What can I ask you?", "Who are you?"),
                      ("I am the assistant of Maple Leaf Shop. I can answer questions about our hours, prices, "
                       "delivery, returns, membership, stores, contact details and payment.",)),
        "bye": (("Bye!", "Goodbye.", "That's all, bye."),
                ("Goodbye! Have a nice day.", "Bye! See you at Maple Leaf Shop.")),
    },
    "zh": {
        "greet": (("你好", "您好", "在吗？", "你好，有人吗？", "早上好", "嗨"),
                  ("您好！欢迎光临枫叶小铺，请问有什么可以帮您？", "你好！有什么可以帮您的吗？")),
        "thanks": (("谢谢！", "谢谢你。", "好的，谢谢。", "非常感谢！", "明白了，谢谢。"),
                   ("不客气！还有其他问题吗？", "很高兴能帮到您！")),
        "abilities": (("你能做什么？", "你可以帮我什么？", "我可以问你什么？", "你是谁？"),
                      ("我是枫叶小铺的客服助手，可以回答关于营业时间、价格、配送、退换货、会员、门店、联系方式和付款的问题。",)),
        "bye": (("再见！", "拜拜。", "没有了，再见。"),
                ("再见！祝您生活愉快。", "拜拜，欢迎再来枫叶小铺！")),
    },
}


# ---------------------------------------------------------------------------------------
# Grading and splitting
# ---------------------------------------------------------------------------------------

# Han ideographs decide "is this Chinese"; CJK punctuation (、。，) also marks text as not English.
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff0c\uff1a\uff1f\uff01\uff1b]")


def contains_cjk(text: str) -> bool:
    """True if the text has any Chinese character or Chinese punctuation."""
    return bool(_CJK.search(text))


def _normalize(text: str) -> str:
    """Fold away differences a grader should not care about.

    NFKC maps full-width forms to half-width ("￥９９" -> "¥99"), casefold ignores case, and
    removing whitespace makes "9 am" equal "9am". "38元" is the same price as "¥38"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"(\d+)元", r"¥\1", text)
    return re.sub(r"\s+", "", text)


def _contains_value(text: str, value: str) -> bool:
    """Substring match on normalized text that never splits a number: "¥38" is not in "¥388"."""
    hay, needle = _normalize(text), _normalize(value)
    start = hay.find(needle)
    while start != -1:
        end = start + len(needle)
        cut_before = needle[0].isdigit() and start > 0 and hay[start - 1].isdigit()
        cut_after = needle[-1].isdigit() and end < len(hay) and hay[end].isdigit()
        if not (cut_before or cut_after):
            return True
        start = hay.find(needle, start + 1)
    return False


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")


def check_answer(fact: Fact, text: str, lang: str, value: tuple[str, str] | None = None) -> bool:
    """Is `text` a correct answer to a question about `fact` asked in `lang`?

    Correct means: states the value (the canonical one, or `value` when the fact was given
    in context), and is written in the question's language."""
    _check_lang(lang)
    expected = (value or (fact.value_en, fact.value_zh))[0 if lang == "en" else 1]
    right_language = bool(_HAN.search(text)) if lang == "zh" else not contains_cjk(text)
    return right_language and _contains_value(text, expected)


def split_questions(fact: Fact, lang: str) -> tuple[list[str], list[str]]:
    """(train, heldout) phrasings: the last HELDOUT_PER_FACT are held out, always."""
    _check_lang(lang)
    questions = list(fact.questions(lang))
    return questions[:-HELDOUT_PER_FACT], questions[-HELDOUT_PER_FACT:]


# ---------------------------------------------------------------------------------------
# Facts in context ("notes")
# ---------------------------------------------------------------------------------------

def fact_statement(fact: Fact, lang: str, value: tuple[str, str] | None = None) -> str:
    """One sentence stating the fact. It reuses the first answer template on purpose: the
    model then sees the exact answer shape in the notes and learns to copy the value."""
    _check_lang(lang)
    v = (value or (fact.value_en, fact.value_zh))[0 if lang == "en" else 1]
    return fact.answers(lang)[0].format(value=v)


def notes_block(notes: list[str], lang: str) -> str:
    """The notes section appended to the system prompt; "" when there are no notes."""
    _check_lang(lang)
    if not notes:
        return ""
    header = "Notes:" if lang == "en" else "备注："
    return "\n".join([header] + [f"- {n}" for n in notes])


def system_prompt(lang: str, notes: list[str] | None = None) -> str:
    """The system message: the default prompt for the language, plus notes if any."""
    _check_lang(lang)
    base = SYSTEM_PROMPT_EN if lang == "en" else SYSTEM_PROMPT_ZH
    block = notes_block(notes or [], lang)
    return f"{base}\n{block}" if block else base


# ---------------------------------------------------------------------------------------
# Generation helpers
# ---------------------------------------------------------------------------------------

_EN_OPENERS = ("Hi, ", "Hello, ", "Excuse me, ", "Quick question: ", "Hey, ")
_EN_FOLLOWUPS = ("Also, ", "One more thing: ", "And ")
_EN_CLOSERS = (" Thanks.", " Thank you!", " Please let me know.")
_ZH_OPENERS = ("你好，", "您好，", "请问", "麻烦问一下，", "打扰一下，")
_ZH_FOLLOWUPS = ("另外，", "还有，", "再问一下，")
_ZH_CLOSERS = ("谢谢！", "谢谢。")


def _decorate(rng: random.Random, question: str, lang: str, followup: bool = False) -> str:
    """Vary how a (training) question is asked: greetings, follow-up words, thanks, no "?".
    The model learns that these wrappers do not change which fact is asked about."""
    openers = (_EN_FOLLOWUPS if followup else _EN_OPENERS) if lang == "en" else (
        _ZH_FOLLOWUPS if followup else _ZH_OPENERS)
    closers = _EN_CLOSERS if lang == "en" else _ZH_CLOSERS
    q = question
    if rng.random() < 0.12 and q[-1] in "?？":
        q = q[:-1]
    if rng.random() < (0.6 if followup else 0.35):
        opener = rng.choice(openers)
        first_word = q.split(" ", 1)[0]
        if lang == "en" and first_word not in ("I", "WeChat") and not first_word[1:2].isupper():
            q = q[0].lower() + q[1:]   # "Hi, what are ..." rather than "Hi, What are ..."
        q = opener + q
    if rng.random() < 0.15:
        q += rng.choice(closers)
    return q


def _answer(rng: random.Random, fact: Fact, lang: str, value: tuple[str, str] | None = None) -> str:
    v = (value or (fact.value_en, fact.value_zh))[0 if lang == "en" else 1]
    return rng.choice(fact.answers(lang)).format(value=v)


def _train_question(rng: random.Random, fact: Fact, lang: str) -> str:
    return rng.choice(split_questions(fact, lang)[0])


def _is_plain_price(fact: Fact) -> bool:
    return fact.value_en == fact.value_zh and re.fullmatch(r"¥\d+", fact.value_en) is not None


def _random_price(rng: random.Random, fact: Fact) -> tuple[str, str]:
    """A fresh counterfactual price near the real one (same roundness), so context training
    sees many values, not only the few listed alternatives: the model must copy, not recall."""
    n = int(fact.value_en[1:])
    step = 100 if n % 100 == 0 else 10 if n % 10 == 0 and n >= 50 else 1
    while True:
        m = rng.randint(max(1, n // 2), n * 2) // step * step
        if m > 0 and m != n:
            return f"¥{m}", f"¥{m}"


def _random_digits(rng: random.Random, fact: Fact) -> tuple[str, str] | None:
    """Replace every number in the value by a fresh one, the same way in both languages
    ("9am to 9pm" / "早上9点到晚上9点" -> "7am to 4pm" / "早上7点到晚上4点"). None when the
    two values do not carry the same numbers (e.g. Chinese numerals like 九折)."""
    nums = re.findall(r"\d+", fact.value_en)
    if not nums or nums != re.findall(r"\d+", fact.value_zh):
        return None
    fresh = {}
    for n in nums:
        if n not in fresh:
            lo, hi = (1, 9) if len(n) == 1 else (10 ** (len(n) - 1), 10 ** len(n) - 1)
            m = n
            while m == n:
                m = str(rng.randint(lo, hi))
            fresh[n] = m
    sub = lambda text: re.sub(r"\d+", lambda mo: fresh[mo.group()], text)  # noqa: E731
    return sub(fact.value_en), sub(fact.value_zh)


def _counterfactual(rng: random.Random, fact: Fact) -> tuple[str, str]:
    # Mostly fresh random numbers: with only the few listed alternatives a small model learns
    # to recall them instead of copying from the notes, and memory then fails on new values.
    if _is_plain_price(fact) and rng.random() < 0.35:
        return _random_price(rng, fact)
    if rng.random() < 0.7:
        fresh = _random_digits(rng, fact)
        if fresh is not None:
            return fresh
    return rng.choice(fact.alternatives)


class _Deck:
    """Draw items in shuffled rounds so every fact is used about equally often."""

    def __init__(self, rng: random.Random, items):
        self.rng, self.items, self.pile = rng, list(items), []

    def draw(self, exclude=()):
        for _ in range(len(self.items) * 2):
            if not self.pile:
                self.pile = self.items[:]
                self.rng.shuffle(self.pile)
            item = self.pile.pop()
            if item not in exclude:
                return item
        return self.rng.choice([i for i in self.items if i not in exclude])


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# ---------------------------------------------------------------------------------------
# Pretraining text
# ---------------------------------------------------------------------------------------

def _qa_lines(rng: random.Random, fact: Fact, lang: str, style: str) -> str:
    q = _train_question(rng, fact, lang)
    if rng.random() < 0.3:
        q = _decorate(rng, q, lang)
    a = _answer(rng, fact, lang)
    if style == "faq":
        return f"Q: {q}\nA: {a}" if lang == "en" else f"问：{q}\n答：{a}"
    return f"Customer: {q}\nAssistant: {a}" if lang == "en" else f"顾客：{q}\n客服：{a}"


def _doc_faq(rng: random.Random, lang: str) -> str:
    topic = rng.choice(TOPICS)
    facts = [f for f in FACTS if f.topic == topic]
    rng.shuffle(facts)
    name = TOPIC_NAMES[topic][0 if lang == "en" else 1]
    title = f"{SHOP_EN} FAQ: {name}" if lang == "en" else f"{SHOP_ZH}常见问题：{name}"
    return "\n".join([title] + [_qa_lines(rng, f, lang, "faq") for f in facts])


def _doc_statements(rng: random.Random, lang: str) -> str:
    facts = rng.sample(FACTS, rng.randint(3, 7))
    title = f"About {SHOP_EN}." if lang == "en" else f"关于{SHOP_ZH}。"
    sep = " " if lang == "en" else ""
    return title + "\n" + sep.join(_answer(rng, f, lang) for f in facts)


def _doc_dialogue(rng: random.Random, lang: str) -> str:
    parts = []
    if rng.random() < 0.3:
        user, replies = SMALL_TALK[lang]["greet"]
        who = ("Customer", "Assistant") if lang == "en" else ("顾客", "客服")
        colon = ": " if lang == "en" else "："
        parts.append(f"{who[0]}{colon}{rng.choice(user)}\n{who[1]}{colon}{rng.choice(replies)}")
    parts += [_qa_lines(rng, f, lang, "dialogue") for f in rng.sample(FACTS, rng.randint(1, 3))]
    return "\n".join(parts)


def _doc_bilingual(rng: random.Random) -> str:
    """The same fact in both languages side by side ties "¥99" in English to "¥99" in Chinese."""
    fact = rng.choice(FACTS)
    return f"{_answer(rng, fact, 'en')}\n{_answer(rng, fact, 'zh')}"


def _pretrain_text(rng: random.Random, target_bytes: int) -> str:
    docs, size = [], 0
    while size < target_bytes:
        kind = rng.random()
        lang = rng.choice(LANGS)
        if kind < 0.3:
            doc = _doc_faq(rng, lang)
        elif kind < 0.55:
            doc = _doc_statements(rng, lang)
        elif kind < 0.85:
            doc = _doc_dialogue(rng, lang)
        else:
            doc = _doc_bilingual(rng)
        docs.append(doc)
        size += len(doc.encode("utf-8")) + 2
    return "\n\n".join(docs) + "\n"


# ---------------------------------------------------------------------------------------
# Chats
# ---------------------------------------------------------------------------------------

def _chat(lang: str, kind: str, system: str, turns: list[tuple[str, str]],
          asked: list[tuple[str, tuple[str, str]]]) -> dict:
    """A chat in OpenAI form plus metadata: kind, lang, and for each fact turn the fact key
    and the value the answer uses (so tests and evals can grade without re-parsing)."""
    messages = [_msg("system", system)]
    for user, assistant in turns:
        messages += [_msg("user", user), _msg("assistant", assistant)]
    return {"messages": messages, "kind": kind, "lang": lang,
            "facts": [k for k, _ in asked], "values": [list(v) for _, v in asked]}


def _small_talk_turn(rng: random.Random, lang: str, what: str) -> tuple[str, str]:
    users, replies = SMALL_TALK[lang][what]
    return rng.choice(users), rng.choice(replies)


def _qa_chat(rng: random.Random, decks: dict, lang: str, same_topic: float = 0.5) -> dict:
    """1-3 fact questions, sometimes opened by a greeting or closed with thanks/goodbye.

    A follow-up asks about a fact of the previous one's topic with probability `same_topic`
    (return window, then exchange period): the model sees related facts side by side and must
    answer each from its own keyword. It took held-out accuracy from 80% to 89% in English."""
    n = rng.choices((1, 2, 3), weights=(0.55, 0.3, 0.15))[0]
    turns, asked = [], []
    if rng.random() < 0.1:
        turns.append(_small_talk_turn(rng, lang, "greet"))
    prev = None
    for i in range(n):
        exclude = [FACTS_BY_KEY[k] for k, _ in asked]
        related = [f for f in FACTS if prev is not None and f.topic == prev.topic and f not in exclude]
        fact = rng.choice(related) if related and rng.random() < same_topic else decks[lang].draw(exclude=exclude)
        q = _decorate(rng, _train_question(rng, fact, lang), lang, followup=i > 0)
        turns.append((q, _answer(rng, fact, lang)))
        asked.append((fact.key, (fact.value_en, fact.value_zh)))
        prev = fact
    if rng.random() < 0.1:
        turns.append(_small_talk_turn(rng, lang, rng.choice(("thanks", "bye"))))
    return _chat(lang, "qa", system_prompt(lang), turns, asked)


def _notes_chat(rng: random.Random, decks: dict, lang: str, relevant: bool) -> dict:
    """A chat whose system prompt carries notes.

    relevant=True: the notes restate the asked fact, usually with a counterfactual value,
    and the answer follows the notes. relevant=False: the notes are about other facts and
    the answer uses the canonical value. Either way the rule the model should learn is the
    same: a fact stated in the notes wins; anything else comes from memory."""
    asked_fact = decks[lang].draw()
    noted: dict[str, tuple[str, str]] = {}
    if relevant:
        noted[asked_fact.key] = ((asked_fact.value_en, asked_fact.value_zh) if rng.random() < 0.2
                                 else _counterfactual(rng, asked_fact))
    # Distractors: other facts, often from the same topic so the model must match precisely.
    n_distract = rng.randint(0 if relevant else 1, 2)
    for _ in range(n_distract):
        same_topic = [f for f in FACTS if f.topic == asked_fact.topic and f.key not in noted
                      and f is not asked_fact]
        pool = same_topic if same_topic and rng.random() < 0.5 else [
            f for f in FACTS if f.key not in noted and f is not asked_fact]
        other = rng.choice(pool)
        noted[other.key] = ((other.value_en, other.value_zh) if rng.random() < 0.5
                            else _counterfactual(rng, other))
    notes = [fact_statement(FACTS_BY_KEY[k], lang, v) for k, v in noted.items()]
    rng.shuffle(notes)

    def value_for(f: Fact) -> tuple[str, str]:
        return noted.get(f.key, (f.value_en, f.value_zh))

    asked_facts = [asked_fact]
    if rng.random() < 0.3:   # a follow-up: either another noted fact or one from memory
        asked_facts.append(rng.choice([f for f in FACTS if f is not asked_fact]))
    turns, asked = [], []
    for i, f in enumerate(asked_facts):
        q = _decorate(rng, _train_question(rng, f, lang), lang, followup=i > 0)
        turns.append((q, _answer(rng, f, lang, value_for(f))))
        asked.append((f.key, value_for(f)))
    kind = "context" if relevant else "irrelevant_notes"
    return _chat(lang, kind, system_prompt(lang, notes), turns, asked)


def _small_talk_chat(rng: random.Random, lang: str) -> dict:
    whats = rng.choice((["greet"], ["abilities"], ["greet", "abilities"], ["thanks"], ["bye"], ["greet", "bye"]))
    turns = [_small_talk_turn(rng, lang, w) for w in whats]
    return _chat(lang, "smalltalk", system_prompt(lang), turns, [])


def _heldout_chats() -> list[dict]:
    chats = []
    for fact in FACTS:
        for lang in LANGS:
            for q in split_questions(fact, lang)[1]:
                answer = fact.answers(lang)[0].format(value=fact.value(lang))
                chats.append({"messages": [_msg("system", system_prompt(lang)), _msg("user", q),
                                           _msg("assistant", answer)],
                              "fact": fact.key, "lang": lang})
    return chats


# ---------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------

@dataclass
class BuiltinCorpus:
    pretrain_text: str
    train_chats: list[dict] = field(default_factory=list)
    heldout_chats: list[dict] = field(default_factory=list)


def build(seed: int = 0, n_context: float = 0.3, *, n_chats: int = 6000, pretrain_bytes: int = 450_000,
          irrelevant_fraction: float = 0.05, smalltalk_fraction: float = 0.04) -> BuiltinCorpus:
    """Generate the corpus. Same seed -> identical corpus; sizes are tunable for tests/experiments.

    n_context: fraction of train chats whose notes state the asked fact (see _notes_chat);
    irrelevant_fraction: chats with notes about other facts only; smalltalk_fraction: chit-chat."""
    if not 0 <= n_context + irrelevant_fraction + smalltalk_fraction <= 1:
        raise ValueError("n_context + irrelevant_fraction + smalltalk_fraction must be within [0, 1]")
    rng = random.Random(seed)
    pretrain = _pretrain_text(rng, pretrain_bytes)

    decks = {lang: _Deck(rng, FACTS) for lang in LANGS}
    n_ctx = round(n_chats * n_context)
    n_irr = round(n_chats * irrelevant_fraction)
    n_small = round(n_chats * smalltalk_fraction)
    chats = []
    for i in range(n_chats):
        lang = LANGS[i % 2]   # exactly balanced languages
        if i < n_ctx:
            chats.append(_notes_chat(rng, decks, lang, relevant=True))
        elif i < n_ctx + n_irr:
            chats.append(_notes_chat(rng, decks, lang, relevant=False))
        elif i < n_ctx + n_irr + n_small:
            chats.append(_small_talk_chat(rng, lang))
        else:
            chats.append(_qa_chat(rng, decks, lang))
    rng.shuffle(chats)
    return BuiltinCorpus(pretrain_text=pretrain, train_chats=chats, heldout_chats=_heldout_chats())


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Crash-safe (livelm.io: temp file, fsync, rename), with "\n" line ends on every platform, so a
    seed gives the same bytes everywhere."""
    from livelm.io import atomic_open
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(out_dir, seed: int = 0, **build_kwargs) -> dict[str, pathlib.Path]:
    """Build the corpus and write pretrain.txt, chat_train.jsonl and chat_heldout.jsonl."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build(seed, **build_kwargs)
    paths = {"pretrain": out / "pretrain.txt", "chat_train": out / "chat_train.jsonl",
             "chat_heldout": out / "chat_heldout.jsonl"}
    _write_atomic(paths["pretrain"], corpus.pretrain_text)
    _write_atomic(paths["chat_train"], _jsonl(corpus.train_chats))
    _write_atomic(paths["chat_heldout"], _jsonl(corpus.heldout_chats))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livelm.data.builtin",
                                     description="Write the built-in Maple Leaf Shop corpus.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write(args.out, seed=args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
