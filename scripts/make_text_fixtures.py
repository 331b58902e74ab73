#!/usr/bin/env python3
"""Make the text-side fixtures (tokenizers, tiny text encoders, reference ids and outputs) for KilnText's tests.

Run by hand (never by CI), from the repository root, in the fixtures venv (scripts/fixtures-requirements.txt,
plus `open_clip_torch` installed with --no-deps for its BPE file, and `protobuf`):

    .venv-fixtures/bin/pip install --no-deps open_clip_torch protobuf
    .venv-fixtures/bin/python scripts/make_text_fixtures.py          # writes fixtures/text/

Deterministic (fixed seeds, one CPU thread, float32). It writes, in diffusers' FLUX folder names:

  fixtures/text/tokenizer/       CLIP BPE: vocab.json + merges.txt derived from open_clip's
                                 bpe_simple_vocab_16e6.txt.gz exactly as CLIP's SimpleTokenizer does (49408 tokens),
                                 tokenizer_config.json / special_tokens_map.json as FLUX ships them (pad <|endoftext|>, 77)
  fixtures/text/tokenizer_2/     T5-convention SentencePiece unigram model (trained here, nmt_nfkc, pad=0 eos=1 unk=2,
                                 no bos) as spiece.model, plus the tokenizer.json that transformers' T5TokenizerFast saves
  fixtures/text/text_encoder/    tiny random CLIPTextModel (BF16 safetensors)
  fixtures/text/text_encoder_2/  tiny random T5EncoderModel (BF16, sharded with an index, as FLUX ships T5-XXL)
  fixtures/text/tokens.json      >= 300 strings with transformers' ids (raw and padded/truncated)
  fixtures/text/reference.safetensors + reference.json
                                 CLIP last hidden state and pooled output, T5 last hidden state (float32) for a few
                                 prompts, and T5's relative-position buckets as torch computes them

Weight init (so wiring bugs move outputs visibly, see DESIGN.md section 5): linear weights N(0, 1/fan_in), norm weights
1 + N(0, 0.1^2), biases N(0, 0.05^2), embeddings N(0, 1); every parameter is then rounded to bfloat16, so the float32
models used for the reference hold exactly the values stored in the files.

The tiny encoders' widths match fixtures/tiny-flux-dev (CLIP hidden 32 = pooled_projection_dim, T5 d_model 64 =
joint_attention_dim), so the folders can be combined with that transformer for a whole-pipeline test.
"""

import gzip
import importlib.util
import io
import json
import math
import os
import random
import shutil
import sys
import unicodedata

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import sentencepiece as spm
import transformers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

EXPECTED_TRANSFORMERS = "5.24.0"
OUT = "fixtures/text"
CLIP_MAX = 77
T5_PADDED_MAX = 64  # every case also carries T5 ids padded/truncated to this length
T5_SP_VOCAB = 1000

CLIP_CONFIG = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32,
    # FLUX's text_encoder/config.json keeps CLIP's legacy ids (eos_token_id 2): pooling takes argmax(input_ids).
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
T5_CONFIG = dict(
    d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
    is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)


def bf16_round(t):
    return t.to(torch.bfloat16).to(torch.float32)


# ----------------------------------------------------------------------------- CLIP tokenizer

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_clip_tokenizer(folder):
    spec = importlib.util.find_spec("open_clip")  # not imported: only its data file is needed
    if spec is None:
        sys.exit("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
    path = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
    # Exactly CLIP's SimpleTokenizer (openai/CLIP clip/simple_tokenizer.py).
    merges = gzip.open(path).read().decode("utf-8").split("\n")
    merges = merges[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {
        "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
        "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
        "pad_token": "<|endoftext|>",
        "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    }
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    config = {
        "add_prefix_space": False, "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True,
        "do_lower_case": True, "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
        "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


# ----------------------------------------------------------------------------- T5 tokenizer

CORPUS_SEED_TEXT = """The quick brown fox jumps over the lazy dog. A photograph of an astronaut riding a horse on the moon.
A watercolor painting of a lighthouse at dawn, highly detailed, 4k, trending on artstation, by a famous painter.
Cyberpunk city street at night, neon signs, reflections in puddles, cinematic lighting, 35mm film grain.
Portrait of an old fisherman with a white beard, dramatic lighting, oil on canvas, museum quality.
A cozy cabin in the snowy mountains, warm light in the windows, pine trees, starry sky, long exposure.
Une photo d'un chat noir assis sur une chaise en bois, éclairée par la lumière du soir, très détaillée.
Ein Hund läuft über die grüne Wiese und spielt mit einem roten Ball. Größe, Straße, Übermaß, schön.
El niño come una manzana mientras mira el océano. ¿Dónde está la biblioteca? ¡Qué bonito día!
Uma menina lê um livro na praça, ao lado de uma fonte. Não há nada mais bonito que o pôr do sol.
Портрет женщины в красном платье на фоне города. Кот спит на диване у окна.
東京の夜景、雨の中のネオン。桜の木の下で猫が眠っている。富士山と湖の写真。
中文测试句子，包含标点符号。一只小狗在公园里奔跑。美丽的山水画，高清，细节丰富。
한국어 문장도 조금 넣습니다. 서울의 밤거리 사진.
Ελληνικά: μια γάτα κάθεται στο παράθυρο. Numbers like 12345, 3.14159, 2024-11-25 and 1,000,000 appear often.
Prices: $19.99, €5, £3.50, 100%, #hashtag, @user, a+b=c, x*y/z, (parentheses) [brackets] {braces} <angle>.
"""


def corpus_lines():
    """A deterministic training corpus: the seed text above, shuffled recombinations, and docstrings of a fixed list
    of standard-library modules (English prose, identifiers, punctuation)."""
    rng = random.Random(1234)
    lines = [l for l in CORPUS_SEED_TEXT.split("\n") if l]
    words = " ".join(lines).split()
    out = lines * 30
    for _ in range(3000):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 25))))
    import argparse, collections, datetime, decimal, fractions, functools, itertools, json as json_module
    import pathlib, random as random_module, re, statistics, string, textwrap, difflib, typing
    for module in [argparse, collections, datetime, decimal, fractions, functools, itertools, json_module, pathlib,
                   random_module, re, statistics, string, textwrap, difflib, typing]:
        docs = [module.__doc__ or ""]
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name), "__doc__", None)
            if isinstance(doc, str):
                docs.append(doc)
        for doc in docs:
            out.extend(l.strip() for l in doc.split("\n") if l.strip())
    return out


def make_t5_tokenizer(folder):
    os.makedirs(folder, exist_ok=True)
    model = io.BytesIO()
    # T5's conventions: unigram, nmt_nfkc normalization, pad=0 </s>=1 <unk>=2 and no <s>, no byte fallback.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="unigram", vocab_size=T5_SP_VOCAB,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=0.9995, normalization_rule_name="nmt_nfkc", byte_fallback=False, num_threads=1,
        input_sentence_size=0, shuffle_input_sentence=False, seed_sentencepiece_size=100000, minloglevel=2)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    # Let transformers convert spiece.model, then keep the tokenizer.json it writes (as FLUX's tokenizer_2 ships one).
    staging = folder + ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    shutil.copy(os.path.join(folder, "spiece.model"), staging)
    tok = T5TokenizerFast.from_pretrained(staging, model_max_length=512, legacy=True)
    tok.save_pretrained(staging)
    shutil.copy(os.path.join(staging, "tokenizer.json"), folder)
    shutil.rmtree(staging)
    config = {
        "eos_token": "</s>", "extra_ids": 100, "model_max_length": 512, "pad_token": "<pad>",
        "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>", "legacy": True,
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
               "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)


# ----------------------------------------------------------------------------- test strings

HANDWRITTEN = [
    "", " ", "   ", "\t", "\n", "\r\n", " \t\n ",
    "a", "A", "a photo of a cat", "A photo of a cat", "A PHOTO OF A CAT",
    "a cat holding a sign that says hello world",
    "Hello   World!!", "hello, world", "hello,world", "hello.world", "  leading and trailing  ",
    "don't", "DON'T", "it's they're we've I'm you'll he'd", "it ' s", "'s", "''", "rock'n'roll", "o'clock",
    "tab\tseparated\tvalues", "line one\nline two\n\nline four", "carriage\rreturn", "mixed \t \n whitespace",
    "many     spaces     between", "trailing spaces    ", "    leading spaces",
    "!!!", "???", "...", "?!?!", "—", "–––", "…", "a...b", "wow!!!!!!!!", "(((nested)))", "[[[x]]]", "{a: 1}",
    "<html><body>text</body></html>", "a->b=>c", "x==y!=z", "#hashtag @mention $dollar %percent ^caret &amp *star",
    "~tilde `backtick` |pipe| \\backslash/ _under_score_", "email@example.com", "https://example.com/path?q=1&r=2#frag",
    "0", "1", "42", "123456789", "3.14159", "1,000,000", "2024-11-25", "12:30:45", "1st 2nd 3rd 4th", "4k 8K 1080p",
    "x1y2z3", "v1.2.3-beta", "0x1F600", "1e-5", "-273.15°C", "½ ¾ ⅓", "²³¹", "١٢٣ (Arabic-Indic digits)", "४२ (Devanagari)",
    "café", "cafe\u0301", "naïve", "résumé", "Ångström", "São Paulo", "Zürich", "Kraków", "Dvořák", "façade", "jalapeño",
    "Straße", "STRASSE", "ß", "ﬁne ﬂower ﬃ", "Ǆ ǅ ǆ", "İstanbul", "ıi", "ΣΑΣ σας", "ΌΣΟΣ", "Ωμέγα",
    "Привет, мир!", "ПРИВЕТ", "Ёлка", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "ქართული",
    "中文", "你好，世界！", "我爱北京天安门", "漢字と仮名", "日本語のテキスト", "こんにちは世界", "カタカナ", "ｶﾀｶﾅ", "ＡＢＣ１２３",
    "한국어", "안녕하세요 세계", "中文 English mixed 混合", "东京tokyo東京", "𠀀𠀁 (CJK ext B)", "〜～", "「引用」『二重』", "。、！？",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "❤️ love", "☕ coffee", "🐱‍👤", "emoji😀in😃text", "a 😀 b",
    "♠♣♥♦", "★☆", "→←↑↓", "∑∫∂√∞", "≤≥≠≈", "©®™", "§¶†‡", "€£¥₹", "°", "µ", "Å", "Ω", "ℌℍ", "①②③", "⑴⑵", "㎏㎡",
    "zero\u200bwidth", "joiner\u200dtest", "non\u00a0breaking", "ideographic\u3000space", "en\u2002em\u2003thin\u2009",
    "line\u2028separator", "para\u2029graph", "nel\u0085char", "vertical\u000btab", "form\u000cfeed", "file\u001csep",
    "unit\u001fsep", "bell\u0007char", "null\u0000char", "del\u007fchar", "soft\u00adhyphen", "bom\ufefftext",
    "rtl\u200fmark", "replacement\ufffdchar", "private\ue000use", "combining\u0301\u0302\u0303", "a\u0308", "n\u0303",
    "variation\ufe0fselector", "\u2581already\u2581metaspace", "▁", "▁▁", "a▁b", "under_score", "__init__",
    "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "<|endoftext|><|endoftext|>", "x<|startoftext|>y",
    "<|ENDOFTEXT|>", "<|endoftext", "</s>", "a </s> b", "x</s>y", "<pad>", "<unk>", "<s>", "<extra_id_0>",
    "fill <extra_id_3> here", "<extra_id_99>", "<extra_id_100>", "<mask>", "[CLS] [SEP]",
    "masterpiece, best quality, ultra-detailed, 8k, photorealistic, (extremely detailed CG unity 8k wallpaper)",
    "a (red:1.2) apple, [blue] sky, {green|yellow} grass",
    "A majestic lion standing on a rock at sunset, golden hour, National Geographic photo, shallow depth of field",
    "an isometric 3D render of a tiny island with a castle, pastel colors, soft shadows, blender, octane render",
    "minimalist logo of a fox, flat vector, orange and white, white background",
    "a bowl of ramen with a soft-boiled egg, steam rising, food photography, 50mm f/1.8",
    "\"quoted text\" and 'single quotes' and “curly quotes” and ‘curly single’ and «guillemets»",
    "UPPER lower MiXeD cAsE", "camelCaseWord PascalCaseWord snake_case_word kebab-case-word",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abababababababababababababababababab", "the the the the the the the the the the",
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
]


def random_strings(count, seed):
    rng = random.Random(seed)
    pools = {
        "ascii": [chr(c) for c in range(0x20, 0x7F)],
        "lower": list("abcdefghijklmnopqrstuvwxyz"),
        "accents": list("àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿāăąćčďđēėęěğīįıłńňőœřśşšťūůűųźżžÀÉÎÕÜÇŒ"),
        "cjk": list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"),
        "kana": list("あいうえおかきくけこさしすせそアイウエオカキクケコーッ"),
        "hangul": list("가나다라마바사아자차카타파하한국어"),
        "cyrillic": list("абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГД"),
        "digits": list("0123456789"),
        "punct": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»—–…·•"),
        "space": [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u3000", "   "],
        "emoji": ["😀", "🎨", "🌸", "🚀", "🐍", "👍🏽", "❤️", "🇫🇷", "👩‍💻", "✨", "🔥", "🙂"],
        "symbols": list("°±×÷µ¶§©®™€£¥→←∞≈≠≤≥½¼①ﬁﬂＡＢＣ１２３ｶﾀ"),
    }
    names = sorted(pools)
    words = "red blue green cat dog tree house photo painting light night city forest river mountain portrait".split()
    out = []
    for i in range(count):
        kind = i % 4
        parts = []
        length = rng.randint(1, 40)
        if kind == 0:  # words and spaces with random decorations
            for _ in range(rng.randint(1, 12)):
                w = rng.choice(words)
                r = rng.random()
                if r < 0.2:
                    w = w.upper()
                elif r < 0.3:
                    w = w.capitalize()
                parts.append(w)
                parts.append(rng.choice(pools["space"]) if rng.random() < 0.3 else " ")
                if rng.random() < 0.2:
                    parts.append(rng.choice(pools["punct"]) * rng.randint(1, 3))
        else:  # characters drawn from a few pools
            chosen = rng.sample(names, rng.randint(1, 3))
            for _ in range(length):
                parts.append(rng.choice(pools[rng.choice(chosen)]))
        out.append("".join(parts))
    return out


def long_strings():
    base = ("a highly detailed photograph of a red fox sitting in a snowy forest at dawn, soft golden light, "
            "bokeh, 85mm lens, award winning, national geographic, ")
    return [
        base * 2,  # ~50 CLIP tokens
        base * 4,  # over 77 CLIP tokens
        base * 12,  # over 256 T5 tokens
        base * 30,  # over 512 T5 tokens
        "word " * 200,
        "中文测试" * 100,
        "😀" * 90,
        ", ".join(str(i) for i in range(300)),
        "x" * 2000,
        " ".join(["supercalifragilisticexpialidocious"] * 40),
    ]


# ----------------------------------------------------------------------------- models

NORM_NAMES = ("LayerNorm", "T5LayerNorm")


@torch.no_grad()
def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(mod, nn.Linear):
                if pname == "weight":
                    p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=g)
                else:
                    p.normal_(0.0, 0.05, generator=g)
            elif type(mod).__name__ in NORM_NAMES:
                if pname == "weight":
                    p.normal_(0.0, 0.1, generator=g).add_(1.0)
                else:
                    p.normal_(0.0, 0.05, generator=g)
            elif isinstance(mod, nn.Embedding):
                p.normal_(0.0, 1.0, generator=g)
            else:
                raise RuntimeError(f"no init rule for {full} ({type(mod).__name__})")
    for p in model.parameters():
        p.copy_(bf16_round(p))


def t5_buckets_torch(max_distance_tested):
    rel = torch.arange(-max_distance_tested, max_distance_tested + 1, dtype=torch.long)
    b = T5EncoderModel.__mro__  # noqa: keep the import used
    from transformers.models.t5.modeling_t5 import T5Attention
    return T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128).tolist()


def main():
    if transformers.__version__ != EXPECTED_TRANSFORMERS:
        sys.exit(f"transformers {transformers.__version__} found; these fixtures are {EXPECTED_TRANSFORMERS}'s behaviour")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)

    make_clip_tokenizer(os.path.join(OUT, "tokenizer"))
    make_t5_tokenizer(os.path.join(OUT, "tokenizer_2"))
    clip_tok = CLIPTokenizer.from_pretrained(os.path.join(OUT, "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(os.path.join(OUT, "tokenizer_2"))
    assert clip_tok.model_max_length == CLIP_MAX and clip_tok.pad_token == "<|endoftext|>", clip_tok
    assert t5_tok.model_max_length == 512 and t5_tok.pad_token_id == 0 and t5_tok.eos_token_id == 1

    # The same tokenizer built from spiece.model alone (no tokenizer.json) must agree, so either file can be read.
    only_spm = os.path.join(OUT, "tmp_spm_only")
    os.makedirs(only_spm)
    shutil.copy(os.path.join(OUT, "tokenizer_2", "spiece.model"), only_spm)
    t5_from_spm = T5TokenizerFast.from_pretrained(only_spm, legacy=True)
    shutil.rmtree(only_spm)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "tokenizer_2", "spiece.model"))

    strings = HANDWRITTEN + random_strings(240, seed=7) + long_strings()
    seen = set()
    strings = [s for s in strings if not (s in seen or seen.add(s))]
    cases = []
    differs_from_sentencepiece = 0
    for s in strings:
        clip_raw = clip_tok(s).input_ids
        clip_padded = clip_tok(s, padding="max_length", max_length=CLIP_MAX, truncation=True).input_ids
        t5_raw = t5_tok(s).input_ids
        t5_padded = t5_tok(s, padding="max_length", max_length=T5_PADDED_MAX, truncation=True).input_ids
        assert t5_from_spm(s).input_ids == t5_raw, (s, t5_from_spm(s).input_ids, t5_raw)
        if sp.encode(s) + [1] != t5_raw:
            differs_from_sentencepiece += 1
        assert len(clip_padded) == CLIP_MAX and len(t5_padded) == T5_PADDED_MAX
        cases.append({"text": s, "clip": clip_raw, "clip_padded": clip_padded, "t5": t5_raw, "t5_padded": t5_padded})
    long_cases = []
    for s in long_strings():
        for n in (512, 256):
            long_cases.append({"text": s, "max_length": n,
                               "t5_padded": t5_tok(s, padding="max_length", max_length=n, truncation=True).input_ids})
    with open(os.path.join(OUT, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "clip_max_length": CLIP_MAX,
                   "t5_padded_max_length": T5_PADDED_MAX, "cases": cases, "t5_long": long_cases},
                  f, ensure_ascii=False, separators=(",", ":"))
    print(f"{len(cases)} strings; sentencepiece itself differs from transformers on {differs_from_sentencepiece}")

    # Tiny encoders.
    clip = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG)).eval()
    init_weights(clip, seed=11)
    t5_vocab = ((len(t5_tok) + 63) // 64) * 64  # like T5's 32128 rows for 32100 tokens
    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, **T5_CONFIG)).eval()
    init_weights(t5, seed=12)
    clip.to(torch.bfloat16).save_pretrained(os.path.join(OUT, "text_encoder"))
    t5.to(torch.bfloat16).save_pretrained(os.path.join(OUT, "text_encoder_2"), max_shard_size="100KB")
    clip = CLIPTextModel.from_pretrained(os.path.join(OUT, "text_encoder"), torch_dtype=torch.float32).eval()
    t5 = T5EncoderModel.from_pretrained(os.path.join(OUT, "text_encoder_2"), torch_dtype=torch.float32).eval()

    prompts = [
        ("cat", "a photo of a cat", 64),
        ("empty", "", 32),
        ("mixed", "Une photo d'un chat noir 😀, 中文测试 — 12345!!", 77),
        ("long", long_strings()[2], 512),
        ("schnell", "A watercolor painting of a lighthouse at dawn", 256),
    ]
    tensors = {}
    meta = {"prompts": []}
    with torch.no_grad():
        for key, text, t5_len in prompts:
            clip_ids = clip_tok(text, padding="max_length", max_length=CLIP_MAX, truncation=True, return_tensors="pt").input_ids
            out = clip(clip_ids, output_hidden_states=False)
            t5_ids = t5_tok(text, padding="max_length", max_length=t5_len, truncation=True, return_tensors="pt").input_ids
            t5_out = t5(t5_ids, output_hidden_states=False)[0]
            tensors[f"{key}.clip_last_hidden_state"] = out.last_hidden_state.float().contiguous()
            tensors[f"{key}.clip_pooled"] = out.pooler_output.float().contiguous()
            tensors[f"{key}.t5_last_hidden_state"] = t5_out.float().contiguous()
            meta["prompts"].append({"key": key, "text": text, "t5_max_length": t5_len,
                                    "clip_ids": clip_ids[0].tolist(), "t5_ids": t5_ids[0].tolist()})
    meta["t5_buckets"] = {"min_relative_position": -600, "buckets": t5_buckets_torch(600)}
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, separators=(",", ":"))
    total = 0
    for root, _, files in os.walk(OUT):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
