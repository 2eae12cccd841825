"""Tokenizer files that transformers reads, written next to an exported model.

WordPiece: vocab.txt with a tokenizer_config.json naming BertTokenizer and the casing (without
it transformers lowercases, which breaks a cased vocabulary). SentencePiece (unigram): a
tokenizer.json for `tokenizers`, the library behind transformers' fast tokenizers, built from
the .model file itself: its pieces and scores, and its normalisation (NFKC, case folding and
quote folding are compiled into the model's character map), so the ids are those of
SentencePiece. Either way `transformers.AutoTokenizer.from_pretrained(folder)` adds [CLS] and
[SEP] as BERT does.
"""

import json
import os

from absl import logging

from bert_jax.data import tokenization

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON_FILE = "tokenizer.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

_SPECIAL_TOKEN_KEYS = {"unk_token": tokenization.UNK, "sep_token": tokenization.SEP,
                       "pad_token": tokenization.PAD, "cls_token": tokenization.CLS,
                       "mask_token": tokenization.MASK}


def write_hf_tokenizer(tokenizer: tokenization.Tokenizer, folder: str,
                       model_max_length: int) -> None:
    """Adds to `folder`, where `tokenizer.save` has written the tokenizer's own files (a
    WordPiece vocab.txt among them), what transformers needs to load it."""
    config = {**_SPECIAL_TOKEN_KEYS, "model_max_length": model_max_length,
              "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
    if isinstance(tokenizer, tokenization.WordPieceTokenizer):
        config.update(tokenizer_class="BertTokenizer", do_lower_case=tokenizer.lowercase)
        if tokenizer.strip_accents != tokenizer.lowercase:  # else transformers' default
            config.update(strip_accents=tokenizer.strip_accents)
    elif isinstance(tokenizer, tokenization.SentencePieceTokenizer):
        fast = sentencepiece_to_tokenizers(tokenizer)
        if fast is None:
            logging.warning("the checkpoint's SentencePiece model is not a unigram model: "
                            "%s written without a tokenizer transformers can load", folder)
            return
        fast.save(os.path.join(folder, TOKENIZER_JSON_FILE))
        config.update(tokenizer_class="PreTrainedTokenizerFast")
    else:
        raise TypeError(f"no Hugging Face form for a {type(tokenizer).__name__}")
    for name, content in ((TOKENIZER_CONFIG_FILE, config),
                          (SPECIAL_TOKENS_MAP_FILE, _SPECIAL_TOKEN_KEYS)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)


def sentencepiece_to_tokenizers(tokenizer: tokenization.SentencePieceTokenizer):
    """A `tokenizers.Tokenizer` with the SentencePiece model's ids, or None for a BPE model."""
    import tokenizers
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import normalizers, pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.model_proto)
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        return None
    pieces = [(piece.piece, piece.score) for piece in proto.pieces]
    fast = tokenizers.Tokenizer(tokenizers.models.Unigram(
        pieces, unk_id=proto.trainer_spec.unk_id, byte_fallback=proto.trainer_spec.byte_fallback))
    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")]
    fast.normalizer = normalizers.Sequence(steps)
    prepend = "always" if spec.add_dummy_prefix else "never"
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    fast.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme=prepend)
    # [PAD] and [UNK] are never produced from text; [CLS] [SEP] [MASK] are matched in it, as
    # the SentencePiece model matches its user-defined symbols.
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    fast.add_special_tokens([
        tokenizers.AddedToken(piece.piece, special=True, normalized=False)
        for piece in proto.pieces
        if piece.type in (kinds.CONTROL, kinds.UNKNOWN, kinds.USER_DEFINED)])
    cls, sep = tokenization.CLS, tokenization.SEP
    fast.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)])
    return fast
