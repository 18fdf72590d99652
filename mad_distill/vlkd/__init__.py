"""VLKD (arXiv 2203.06386): distil a frozen CLIP into a BART text encoder-decoder so it answers
visual questions zero-shot by generation and keeps its text ability."""

from mad_distill.vlkd.module import (
    CLIPLikeTeacher,
    VLKDBatch,
    VLKDConfig,
    VLKDModule,
    collate_pairs,
)
from mad_distill.vlkd.objectives import (
    OBJECTIVES,
    ImagePrefix,
    encode_with_prefix,
    image_conditioned_infilling,
    image_text_contrastive,
    pool_text,
    prefix_encoder_outputs,
    span_mask,
    text_text_distance,
)
from mad_distill.vlkd.plm import build_bart, train_bpe_tokenizer
from mad_distill.vlkd.zero_shot import ZeroShotVQA, normalize_answer, vqa_accuracy

__all__ = [
    "OBJECTIVES",
    "CLIPLikeTeacher",
    "ImagePrefix",
    "VLKDBatch",
    "VLKDConfig",
    "VLKDModule",
    "ZeroShotVQA",
    "build_bart",
    "collate_pairs",
    "encode_with_prefix",
    "image_conditioned_infilling",
    "image_text_contrastive",
    "normalize_answer",
    "pool_text",
    "prefix_encoder_outputs",
    "span_mask",
    "text_text_distance",
    "train_bpe_tokenizer",
    "vqa_accuracy",
]
