"""Zero-shot VQA with a VLKD-distilled PLM (arXiv 2203.06386, §4: open-ended VQA as conditional
generation): the encoder reads a prompt with the question and a mask where the answer goes, the
image enters as the CLIP-embedding prefix of the encoder states, and the decoder — forced through
the prompt up to the mask, as in text infilling — generates the answer."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from transformers import BartForConditionalGeneration, PreTrainedTokenizerBase

from mad_distill.vlkd.module import CLIPLikeTeacher, VLKDModule
from mad_distill.vlkd.objectives import ImagePrefix, encode_with_prefix

DEFAULT_TEMPLATE = "question: {question} answer: {mask}"


class ZeroShotVQA:
    """Answer questions about images by generation.

    Args:
        student: the (distilled) BART.
        tokenizer: its tokenizer (must have a mask token).
        prefix: the :class:`ImagePrefix` learned by VLKD; None answers from the text alone.
        teacher: the CLIP teacher, to embed ``images``; not needed with ``image_embeds``.
        template: prompt with ``{question}`` and one ``{mask}`` (where the answer goes); text
            after ``{mask}`` (e.g. ``"."``) marks where the generated answer ends.
        num_beams: 1 = greedy (default), > 1 = beam search.
        max_new_tokens: answer length cap in tokens (default 8).
        max_length: truncation of the encoder prompt (default 64).
        prefix_at: where the prefix enters, as it was distilled (``VLKDConfig.prefix_at``).
    """

    def __init__(
        self,
        student: BartForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        prefix: ImagePrefix | None = None,
        teacher: CLIPLikeTeacher | None = None,
        template: str = DEFAULT_TEMPLATE,
        num_beams: int = 1,
        max_new_tokens: int = 8,
        max_length: int = 64,
        prefix_at: str = "encoder_output",
    ) -> None:
        if template.count("{mask}") != 1 or template.count("{question}") != 1:
            raise ValueError(
                f"template must contain '{{question}}' once and '{{mask}}' once, got {template!r}"
            )
        if template.index("{mask}") < template.index("{question}"):
            raise ValueError(f"template: '{{mask}}' must come after '{{question}}': {template!r}")
        if tokenizer.mask_token is None:
            raise ValueError("tokenizer has no mask token")
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be an int >= 1, got {num_beams}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens}")
        self.student, self.tokenizer = student, tokenizer
        self.prefix, self.teacher = prefix, teacher
        self.template, self.num_beams = template, num_beams
        self.max_new_tokens, self.max_length = max_new_tokens, max_length
        self.prefix_at = prefix_at

    @classmethod
    def from_module(
        cls, module: VLKDModule, use_image: bool = True, **kwargs: object
    ) -> ZeroShotVQA:
        """The predictor of a :class:`VLKDModule` (``use_image=False``: text-only ablation)."""
        return cls(
            module.student,
            module.tokenizer,
            module.prefix if use_image else None,
            module.teacher,
            max_length=module.config.max_length,
            prefix_at=module.config.prefix_at,
            **kwargs,  # type: ignore[arg-type]
        )

    def prompts(self, question: str) -> tuple[str, str]:
        """``(encoder prompt, decoder prompt)``: the template with the mask token, and the
        template cut before ``{mask}`` (what the decoder is forced through)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        enc = self.template.format(question=question.strip(), mask=self.tokenizer.mask_token)
        dec = self.template.split("{mask}")[0].format(question=question.strip()).rstrip()
        return enc, dec

    @torch.no_grad()
    def predict(
        self,
        questions: Sequence[str],
        images: Tensor | None = None,
        image_embeds: Tensor | None = None,
    ) -> list[str]:
        """Answer ``questions`` (``B`` strings) about ``images [B, 3, H, W]`` (CLIP-preprocessed)
        or precomputed ``image_embeds [B, e]``; returns ``B`` answer strings."""
        questions = list(questions)
        img = self._image_embeds(len(questions), images, image_embeds)
        pairs = [self.prompts(q) for q in questions]
        tok = self.tokenizer
        dec_ids = [tok(d, add_special_tokens=True)["input_ids"][:-1] for _, d in pairs]  # no </s>
        start = self.student.config.decoder_start_token_id
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(dec_ids):  # same forced length → one batch, no decoder padding
            groups.setdefault(len(ids), []).append(i)
        was_training = self.student.training
        self.student.eval()
        device = self.student.device
        answers: list[str] = [""] * len(questions)
        suffix = self.template.split("{mask}")[1].strip()
        try:
            for idx in groups.values():
                enc = tok(
                    [pairs[i][0] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                prefix = None
                if img is not None and self.prefix is not None:
                    prefix = self.prefix(img[idx].to(device))
                enc_out, attn = encode_with_prefix(
                    self.student, enc["input_ids"], enc["attention_mask"], prefix, self.prefix_at
                )
                forced = torch.tensor([[start] + dec_ids[i] for i in idx], device=device)
                out = self.student.generate(
                    encoder_outputs=enc_out,
                    attention_mask=attn,
                    decoder_input_ids=forced,
                    num_beams=self.num_beams,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    early_stopping=self.num_beams > 1,
                )
                for row, i in zip(out, idx):
                    text = tok.decode(row[forced.shape[1] :], skip_special_tokens=True).strip()
                    if suffix and suffix in text:  # the answer ends where the template resumes
                        text = text[: text.index(suffix)].strip()
                    answers[i] = text
        finally:
            self.student.train(was_training)
        return answers

    def _image_embeds(
        self, b: int, images: Tensor | None, image_embeds: Tensor | None
    ) -> Tensor | None:
        if image_embeds is not None:
            if image_embeds.dim() != 2 or image_embeds.shape[0] != b:
                raise ValueError(
                    f"image_embeds must be [B, e] with B = {b}, got {tuple(image_embeds.shape)}"
                )
            return image_embeds.float()
        if images is None:
            if self.prefix is not None:
                raise ValueError("predict: pass images or image_embeds (the predictor uses them)")
            return None
        if images.shape[0] != b:
            raise ValueError(f"images has batch {images.shape[0]}, questions have {b}")
        if self.teacher is None:
            raise ValueError("predict: images given but no teacher to embed them")
        return self.teacher.encode_image(images).pooled.float()


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "'"})
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, punctuation to spaces, number words to digits,
    articles dropped, whitespace collapsed."""
    words = _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()
    return " ".join(_NUMBERS.get(w, w) for w in words)


def vqa_accuracy(
    predictions: Sequence[str], answers: Sequence[str | Sequence[str] | Mapping[str, float]]
) -> float:
    """Mean accuracy after :func:`normalize_answer`. Per item, ``answers`` is one string (exact
    match), a list of human answers (VQA: ``min(1, matches / 3)``), or a mapping answer → soft
    score (the score of the prediction, 0 if absent)."""
    if len(predictions) != len(answers):
        raise ValueError(f"vqa_accuracy: {len(predictions)} predictions but {len(answers)} answers")
    if not predictions:
        raise ValueError("vqa_accuracy: no predictions")
    total = 0.0
    for p, a in zip(predictions, answers):
        p = normalize_answer(p)
        if isinstance(a, str):
            total += float(p == normalize_answer(a))
        elif isinstance(a, Mapping):
            scores = {normalize_answer(k): float(v) for k, v in a.items()}
            total += scores.get(p, 0.0)
        else:
            total += min(1.0, sum(p == normalize_answer(x) for x in a) / 3.0)
    return total / len(predictions)
