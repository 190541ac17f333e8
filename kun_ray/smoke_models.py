"""Smoke-test models: tiny stand-ins, built on the spot from a corpus, for the demo and the tests.

No model can be downloaded where the demo and the tests run, so they build their own:

- a byte-level BPE tokenizer (Hugging Face `tokenizers`, saved as a transformers fast tokenizer);
- a SentencePiece model and a bigram KenLM model in ARPA format over its pieces;
- a chat model: a randomly initialised two-layer Llama with that tokenizer and a chat
  template, which vLLM serves like any real model.  It writes gibberish: it shows the
  plumbing of the label, score and polish stages, not their quality.

They are real models of their formats, loaded by the same code as real ones; they are not
good models.  Real runs use the label model's tokenizer and a Chinese KenLM model (README).

    python -m kun_ray.smoke_models CONFIG OUT_DIR   # trained on the documents of CONFIG's sources
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from kun_ray.clean.perplexity import ccnet_normalize

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% if not loop.last or message['role'] != 'assistant' %}</s>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 2000) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return out_dir


def build_chat_model(tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random two-layer Llama saved beside its tokenizer (head size 64: vLLM's CPU attention needs it)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(str(tokenizer_dir))
    return tokenizer_dir


def build_sentencepiece(lines: list[str], model_path: Path, extra_pieces: int = 64) -> Path:
    """Every character of the corpus is a piece (Chinese needs them all), plus a few merges."""
    import sentencepiece

    vocab_size = len(set("".join(lines))) + extra_pieces
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        model_type="unigram",
        minloglevel=2,
    )
    model_path.write_bytes(model.getvalue())
    return model_path


BIGRAM_SHARE = 0.6  # of each context's probability mass given to the bigrams seen after it


def write_bigram_arpa(lines: list[str], sentencepiece_model: Path, arpa_path: Path) -> Path:
    """A bigram language model over the model's pieces, as an ARPA file KenLM loads.

    Unigrams are add-one smoothed; each seen bigram gets BIGRAM_SHARE of its context's maximum
    likelihood estimate and every context backs off with the rest.  (KenLM has no unigram-only
    models and lmplz, which estimates real ones, is not in the kenlm package.)
    """
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    contexts: Counter[str] = Counter()
    for line in lines:
        pieces = ["<s>", *(("<unk>" if sp.is_unknown(i) else sp.id_to_piece(i)) for i in sp.encode(line)), "</s>"]
        unigrams.update(pieces[1:])
        contexts.update(pieces[:-1])
        bigrams.update(zip(pieces[:-1], pieces[1:]))
    vocab = {sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))}
    words = sorted(vocab | {"</s>", "<unk>"})
    total = sum(unigrams[w] + 1 for w in words)
    backoff = math.log10(1 - BIGRAM_SHARE)
    one = [f"-99\t<s>\t{backoff:.6f}"]
    one += [f"{math.log10((unigrams[w] + 1) / total):.6f}\t{w}\t{backoff if w in contexts else 0:.6f}" for w in words]
    two = [f"{math.log10(BIGRAM_SHARE * n / contexts[a]):.6f}\t{a} {b}" for (a, b), n in sorted(bigrams.items())]
    arpa_path.write_text(
        f"\\data\\\nngram 1={len(one)}\nngram 2={len(two)}\n\n\\1-grams:\n"
        + "\n".join(one)
        + "\n\n\\2-grams:\n"
        + "\n".join(two)
        + "\n\n\\end\\\n",
        encoding="utf-8",
    )
    return arpa_path


def build_all(texts: list[str], out_dir: Path, chat_model: bool = True) -> dict[str, Path]:
    """Every smoke-test model, trained on `texts` (and the shipped prompts), under `out_dir`.

    `chat-model/` holds the tokenizer and, with `chat_model`, the model's weights too.
    """
    from kun_ray.llm.prompts import all_prompt_texts

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [n for t in texts for line in t.split("\n") if (n := ccnet_normalize(line))]
    sp_model = build_sentencepiece(lines, out_dir / "zh.sp.model")
    tokenizer = build_tokenizer([*texts, *all_prompt_texts()], out_dir / "chat-model")
    models = {
        "tokenizer": tokenizer,
        "sentencepiece_model": sp_model,
        "kenlm_model": write_bigram_arpa(lines, sp_model, out_dir / "zh.arpa"),
    }
    if chat_model:
        models["chat_model"] = build_chat_model(tokenizer)
    return models


def corpus_texts(config_path: str) -> list[str]:
    from kun_ray.io.read import plan_inputs, read_file
    from kun_ray.plan import load_config

    config = load_config(config_path)
    texts = []
    for file in plan_inputs(config):
        source = config.source(file.source)
        texts += [
            r["text"]
            for r in read_file(file, source, config.storage_for(source.storage))
            if r["reject_reason"] is None
        ]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kun_ray.smoke_models", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a run config whose sources' documents to train on")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for name, path in build_all(corpus_texts(args.config), args.out_dir).items():
        print(f"smoke-test {name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
