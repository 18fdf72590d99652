"""``MADMixin``: Multimodal Adaptive Distillation for any ``lightning.LightningModule``.

The mixin holds the frozen teachers and the trainable projection heads, and turns a batch's
teacher inputs (:class:`~mad_distill.types.MADBatch`) and the student's tokens
(:class:`~mad_distill.types.StudentTokens`) into the distillation loss added to the task loss
during finetuning (MAD, arXiv 2204.10496; CLIP-TD, arXiv 2201.05729)::

    L = L_task + lambda_feat(t) * L_feat + lambda_kl(t) * L_kl

Teachers are kept outside the module tree (a plain dict, moved by :meth:`MADMixin._apply`), so
they never appear in ``parameters()`` (the optimizer), ``state_dict()`` (checkpoints), DDP's
gradient buckets or ``.train()``; the projection heads are ordinary submodules
(``mad_projectors``), trained and saved with the student, which exact resume needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from mad_distill.align import Projector, pool_words, resize_grid, split_words
from mad_distill.class_groups import best_class_in_best_group, group_class_logits, group_labels
from mad_distill.config import MADConfig
from mad_distill.distributed import is_distributed, reduce_mad_parts
from mad_distill.losses import feature_distill_loss, instance_kl_loss, token_kl_loss
from mad_distill.ops._utils import require
from mad_distill.schedules import lambda_at
from mad_distill.selection import compute_scores, select_tokens
from mad_distill.types import (
    IMAGE,
    TEXT,
    MADBatch,
    StudentTokens,
    TeacherImageOutput,
    TeacherTextOutput,
)
from mad_distill.weighting import LABEL_MODES, confidence_weights

#: what :meth:`MADMixin.mad_teacher_outputs` may be asked for
TEACHER_OUTPUTS = ("image", "clip_text", "text", "zero_shot")

#: version of the ``checkpoint["mad"]`` record
_CKPT_FORMAT = 1


@dataclass
class MADTeacherOutputs:
    """The teachers' view of one batch (all detached, on the module's device).

    Args:
        image: CLIP image tower on ``MADBatch.teacher_images``.
        clip_text: CLIP text tower on ``MADBatch.texts``.
        text: the ``text`` role teacher (HF encoder) on ``MADBatch.texts``.
        zero_shot: ``[B, C]`` CLIP zero-shot logits of the images over ``MADBatch.candidates``.
    """

    image: TeacherImageOutput | None = None
    clip_text: TeacherTextOutput | None = None
    text: TeacherTextOutput | None = None
    zero_shot: Tensor | None = None


class MADMixin:
    """Adds MAD distillation to a ``LightningModule``: ``class M(MADMixin, L.LightningModule)``.

    Call :meth:`configure_mad` in ``__init__`` (after ``super().__init__()``) and add
    :meth:`mad_loss` to the task loss in ``training_step``. If you override
    ``on_save_checkpoint`` / ``on_load_checkpoint`` / ``_apply``, call ``super()``.
    """

    # ------------------------------------------------------------------ configuration
    def configure_mad(
        self,
        config: MADConfig | Mapping[str, Any],
        student_dim: int,
        teacher_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Build the teachers and the projection heads.

        Args:
            config: a :class:`~mad_distill.config.MADConfig` or a dict of its fields. Teachers
                given as spec strings are created with
                :func:`~mad_distill.teachers.factory.create_teacher`; teacher objects are used
                as they are.
            student_dim: width ``d_s`` of ``StudentTokens.hidden`` (the projection heads' input).
            teacher_kwargs: per role, keyword arguments for ``create_teacher`` (e.g.
                ``{"clip": {"precision": "fp16"}}``).
        """
        from mad_distill.teachers.factory import create_teacher

        if not isinstance(self, nn.Module):
            raise TypeError("MADMixin must be mixed into an nn.Module / LightningModule")
        if "_modules" not in self.__dict__:
            raise RuntimeError("call super().__init__() before configure_mad()")
        if isinstance(config, Mapping):
            config = MADConfig.from_dict(config)
        if not isinstance(config, MADConfig):
            raise TypeError(f"config must be a MADConfig or a dict, got {type(config).__name__}")
        if isinstance(student_dim, bool) or not isinstance(student_dim, int) or student_dim < 1:
            raise ValueError(f"student_dim must be an int >= 1, got {student_dim!r}")
        teacher_kwargs = dict(teacher_kwargs or {})
        unknown = [r for r in teacher_kwargs if r not in config.teachers]
        if unknown:
            raise ValueError(
                f"teacher_kwargs has roles {unknown} that config.teachers does not name "
                f"({list(config.teachers)})"
            )
        teachers: dict[str, nn.Module] = {}
        for role, spec in config.teachers.items():
            teacher = create_teacher(spec, **dict(teacher_kwargs.get(role, {})))
            _check_role(role, teacher)
            teacher.requires_grad_(False)
            teacher.eval()
            teachers[role] = teacher
        # the teachers live on the module's device (Lightning may have moved it already)
        device = next((p.device for p in self.parameters()), None)
        if device is not None:
            for t in teachers.values():
                t.to(device)
        # plain attributes, not submodules: out of parameters(), state_dict(), .train(), DDP
        self.__dict__["_mad_teachers"] = teachers
        self.__dict__["_mad_config"] = config
        self.__dict__["_mad_identities"] = {r: t.identity for r, t in teachers.items()}
        self.mad_projectors = nn.ModuleDict(
            {
                modality: Projector(student_dim, dim, kind=config.feat.projector)
                for modality, dim in self._mad_target_dims().items()
            }
        )
        if device is not None:
            self.mad_projectors.to(device)

    def _mad_target_dims(self) -> dict[str, int]:
        cfg, teachers = self.mad_config, self.mad_teachers
        dims: dict[str, int] = {}
        if "image" in cfg.select.modalities:
            dims["image"] = int(teachers["clip"].token_dim)
        if "text" in cfg.select.modalities:
            if "text" in teachers:
                dims["text"] = int(teachers["text"].token_dim)
            else:
                dims["text"] = int(teachers["clip"].text_token_dim)
        return dims

    @property
    def mad_config(self) -> MADConfig:
        """The validated config given to :meth:`configure_mad`."""
        cfg = self.__dict__.get("_mad_config")
        if cfg is None:
            raise RuntimeError("MAD is not configured: call self.configure_mad(config, ...) first")
        return cfg

    @property
    def mad_teachers(self) -> Mapping[str, nn.Module]:
        """Role -> frozen teacher (read-only view; the teachers are not submodules)."""
        return MappingProxyType(self.__dict__.get("_mad_teachers", {}))

    @property
    def mad_teacher_identities(self) -> dict[str, str]:
        """Role -> :attr:`Teacher.identity`, recorded when the teachers were built."""
        return dict(self.__dict__.get("_mad_identities", {}))

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # .to() / .cuda() / .half() reach the teachers too, although they are not submodules
        out = super()._apply(fn, *args, **kwargs)
        for teacher in self.__dict__.get("_mad_teachers", {}).values():
            teacher._apply(fn, *args, **kwargs)
        return out

    # ------------------------------------------------------------------ teachers
    def mad_required_outputs(self) -> frozenset[str]:
        """Which :data:`TEACHER_OUTPUTS` :meth:`mad_loss` needs under the current config."""
        cfg = self.mad_config
        mods, source = cfg.select.modalities, cfg.select.source
        has_clip, has_text = "clip" in self.mad_teachers, "text" in self.mad_teachers
        need: set[str] = set()
        zero_shot = cfg.weight.mode != "uniform" or (cfg.kl.instance_level and cfg.kl.weight > 0)
        if has_clip:
            if "image" in mods or zero_shot or ("text" in mods and source == "relevance"):
                need.add("image")
            if ("image" in mods and source == "relevance") or (
                "text" in mods and (not has_text or source == "relevance")
            ):
                need.add("clip_text")
            if zero_shot:
                need.add("zero_shot")
        if has_text and "text" in mods:
            need.add("text")
        return frozenset(need)

    def use_mad_cache(self, cache: Any) -> None:
        """Read the teachers' outputs from a teacher-feature cache instead of running them.

        Args:
            cache: a :class:`~mad_distill.cache.TeacherCache` built with this module's teachers
                (checked: :class:`~mad_distill.cache.CacheError` names the role that differs)
                holding every output the config needs; ``None`` goes back to live teachers.
                Batches then need ``MADBatch.keys``; ``teacher_images`` may be ``None``.
        """
        if cache is None:
            self.__dict__.pop("_mad_cache", None)
            return
        from mad_distill.cache import CacheError, TeacherCache

        if not isinstance(cache, TeacherCache):
            raise TypeError(f"cache must be a TeacherCache or None, got {type(cache).__name__}")
        cache.check_teachers(self.mad_teacher_identities)
        missing = sorted(self.mad_required_outputs() - cache.outputs)
        if missing:
            raise CacheError(
                f"the config needs teacher outputs {missing} that the cache {cache.directory} "
                f"does not hold (it has {sorted(cache.outputs)})"
            )
        self.__dict__["_mad_cache"] = cache

    @property
    def mad_cache(self) -> Any:
        """The attached :class:`~mad_distill.cache.TeacherCache`, or ``None`` (live teachers)."""
        return self.__dict__.get("_mad_cache")

    def mad_teacher_outputs(self, batch: MADBatch, required: frozenset[str]) -> MADTeacherOutputs:
        """Run the frozen teachers on ``batch`` (no grad) for the outputs in ``required``.

        Override this (or let the teacher-feature cache do it) to read the outputs from
        elsewhere; :meth:`mad_loss` uses only what this returns.
        """
        cache = self.__dict__.get("_mad_cache")
        if cache is not None:  # teacher-feature cache (issue 7): rows by MADBatch.keys, fp32
            device = next((p.device for p in self.parameters()), None)
            return cache.teacher_outputs(batch, required, device=device)
        teachers = self.mad_teachers
        out = MADTeacherOutputs()
        # teachers run outside the student's autocast: their outputs are fp32 targets, as from the
        # cache (CLIP's logit scale would amplify bf16 rounding of the zero-shot scores); a
        # half-precision teacher is an explicit choice (teacher_kwargs precision)
        with torch.no_grad(), _autocast_off():
            for teacher in teachers.values():
                teacher.eval()  # cheap guard: nothing may turn dropout on in a teacher
            if "image" in required or "zero_shot" in required:  # zero-shot reads the pooled
                if batch.teacher_images is None:
                    raise ValueError(
                        "MADBatch.teacher_images is None, but the config needs the CLIP image "
                        "teacher (image tokens, relevance scores or zero-shot weights)"
                    )
                out.image = teachers["clip"].encode_image(batch.teacher_images)
            if "clip_text" in required:
                out.clip_text = teachers["clip"].encode_text(list(batch.texts))
            if "text" in required:
                out.text = teachers["text"].encode_text(list(batch.texts))
            if "zero_shot" in required:
                if batch.candidates is None:
                    raise ValueError(
                        "MADBatch.candidates is None, but the config needs the teacher's "
                        f"zero-shot scores (weight.mode={self.mad_config.weight.mode!r}, "
                        f"kl.instance_level={self.mad_config.kl.instance_level}); pass the "
                        "candidate texts, or use weight.mode='uniform' and kl.instance_level=False"
                    )
                out.zero_shot = teachers["clip"].zero_shot_logits(
                    out.image.pooled, batch.candidates
                )
        return out

    def mad_teacher_labels(self, batch: MADBatch) -> Tensor:
        """The CLIP teacher's zero-shot prediction ``[B]`` (long) over ``batch.candidates``.

        For distilling on unlabelled inputs: put it in ``MADBatch.labels`` so the
        label-reading weight modes (``gt_prob``, ``correct``, ``gain``) weight an unlabelled
        item by the teacher's confidence in its own answer. Never the ground truth. With
        ``class_groups``: the best class of the teacher's most probable group.
        """
        teach = self.mad_teacher_outputs(batch, frozenset({"zero_shot"}))
        if teach.zero_shot is None:
            raise ValueError(
                "mad_teacher_outputs returned no zero_shot logits; the teacher's labels need "
                "MADBatch.candidates"
            )
        return self._mad_teacher_argmax(teach.zero_shot)

    def _mad_teacher_argmax(self, zero_shot: Tensor) -> Tensor:
        groups = self.mad_config.class_groups
        if groups is not None:
            return best_class_in_best_group(zero_shot, groups)
        return zero_shot.argmax(-1)

    # ------------------------------------------------------------------ the loss
    def mad_loss(
        self, batch: MADBatch, student: StudentTokens, teacher_labels: bool = False
    ) -> Tensor:
        """The weighted distillation loss of one batch (add it to the task loss).

        Follows DESIGN.md section 1: per modality, align teacher tokens to the student's
        (image: teacher patch grid bilinearly resized to ``student.image_grid``; text: both sides
        averaged per word of :func:`~mad_distill.align.split_words`, words present on both sides
        only), score and select tokens per instance, weight instances by the CLIP teacher's
        zero-shot confidence, and sum the feature losses of the modalities; KL adds the
        token-level term (when ``student.mlm_logits`` is given) and the instance-level term
        (when ``student.logits`` is given). Schedules follow ``self.global_step``.

        Logs ``mad/feat``, ``mad/kl``, ``mad/weight_mean``, ``mad/selected_frac`` (prefixed
        ``val_`` outside training) and keeps them in :attr:`mad_last`.

        ``teacher_labels=True`` (for unlabelled inputs): the label-reading weight modes read the
        teacher's own zero-shot prediction (as :meth:`mad_teacher_labels`, from the outputs this
        call computes anyway) instead of ``batch.labels``, which is then ignored.

        Returns:
            Scalar fp32 ``lambda_feat(t) * L_feat + lambda_kl(t) * L_kl``.
        """
        cfg = self.mad_config
        if not isinstance(batch, MADBatch):
            raise TypeError(f"batch must be a MADBatch, got {type(batch).__name__}")
        if not isinstance(student, StudentTokens):
            raise TypeError(f"student must be StudentTokens, got {type(student).__name__}")
        b = student.hidden.shape[0]
        if len(batch.texts) != b:
            raise ValueError(
                f"MADBatch has {len(batch.texts)} texts but StudentTokens.hidden has batch {b}"
            )
        step = int(self.global_step)
        lam_feat = cfg.feat.weight * self._mad_lambda(cfg.feat.schedule, step)
        lam_kl = cfg.kl.weight * self._mad_lambda(cfg.kl.schedule, step)
        device = student.hidden.device
        teach = self.mad_teacher_outputs(batch, self.mad_required_outputs())

        if teacher_labels and cfg.weight.mode in LABEL_MODES:  # zero_shot was required
            batch = dataclasses.replace(batch, labels=self._mad_teacher_argmax(teach.zero_shot))
        weights = self._mad_weights(batch, teach, b, device, student.logits)
        backend = cfg.kernels
        zero = student.hidden.new_zeros((), dtype=torch.float32)
        feat, kl = zero, zero
        n_sel, n_valid = zero, zero
        text_sel: tuple[Tensor, Tensor, int] | None = None  # (index, word ids, n words)
        # a part is computed whenever its configured weight is > 0 (also while its schedule is
        # at 0, e.g. during a warm-up, so the logs show it); weight 0 turns it off

        if "image" in cfg.select.modalities:
            f, sel, val = self._mad_image_term(batch, student, teach, weights, cfg.feat.weight > 0)
            feat, n_sel, n_valid = feat + f, n_sel + sel, n_valid + val
        if "text" in cfg.select.modalities:
            f, sel, val, text_sel = self._mad_text_term(
                batch, student, teach, weights, cfg.feat.weight > 0
            )
            feat, n_sel, n_valid = feat + f, n_sel + sel, n_valid + val

        if cfg.kl.weight > 0 and cfg.kl.token_level and student.mlm_logits is not None:
            kl = kl + self._mad_token_kl(student, teach, text_sel, weights)
        if cfg.kl.weight > 0 and cfg.kl.instance_level and student.logits is not None:
            t_logits = teach.zero_shot
            if t_logits is None or tuple(t_logits.shape) != tuple(student.logits.shape):
                raise ValueError(
                    f"kl.instance_level compares StudentTokens.logits "
                    f"{tuple(student.logits.shape)} with the teacher's zero-shot logits over "
                    f"MADBatch.candidates "
                    f"{None if t_logits is None else tuple(t_logits.shape)}: give one candidate "
                    "per student class, in the same order, or set kl.instance_level=False"
                )
            s_logits, t_logits = student.logits, t_logits.to(device)
            if cfg.class_groups is not None:  # the teacher's split inside a group is noise
                s_logits = group_class_logits(s_logits, cfg.class_groups, cfg.kl.tau)
                t_logits = group_class_logits(t_logits, cfg.class_groups, cfg.kl.tau)
            kl = kl + instance_kl_loss(s_logits, t_logits, weights, cfg.kl.tau, backend=backend)

        loss = lam_feat * feat + lam_kl * kl
        parts = {
            "feat": feat.detach(),
            "kl": kl.detach(),
            "weight_mean": weights.mean(),
            "selected_frac": n_sel / n_valid.clamp(min=1),
        }
        if is_distributed():  # global values on every rank, one fused all-reduce (issue 7)
            parts = reduce_mad_parts(parts, n_sel, n_valid)
        self.__dict__["_mad_last"] = parts
        self._mad_log(parts, b)
        return loss

    @property
    def mad_last(self) -> dict[str, Tensor]:
        """The parts of the last :meth:`mad_loss` call (detached scalars, no host sync)."""
        return dict(self.__dict__.get("_mad_last", {}))

    # ------------------------------------------------------------------ pieces
    def _mad_lambda(self, schedule: Any, step: int) -> float:
        total = None
        if schedule.kind == "cosine" and schedule.total_steps is None:
            trainer = getattr(self, "_trainer", None)
            if trainer is None:
                raise ValueError(
                    "a cosine schedule without total_steps needs the trainer's "
                    "estimated_stepping_batches; set schedule.total_steps or train with a Trainer"
                )
            total = trainer.estimated_stepping_batches
        return lambda_at(schedule, step, total)

    def _mad_weights(
        self,
        batch: MADBatch,
        teach: MADTeacherOutputs,
        b: int,
        device: torch.device,
        student_logits: Tensor | None = None,
    ) -> Tensor:
        cfg = self.mad_config
        if cfg.weight.mode == "uniform":
            return torch.ones(b, device=device)
        labels = None if batch.labels is None else batch.labels.to(teach.zero_shot.device)
        t_logits = teach.zero_shot
        if cfg.class_groups is not None:
            t_logits = group_class_logits(t_logits, cfg.class_groups)
            if student_logits is not None and cfg.weight.mode == "gain":
                student_logits = group_class_logits(student_logits, cfg.class_groups)
            if labels is not None and not labels.is_floating_point():
                labels = group_labels(labels, cfg.class_groups)
        w = confidence_weights(
            t_logits,
            labels,
            mode=cfg.weight.mode,
            gamma=cfg.weight.gamma,
            all_reduce=_all_reduce_sum(),
            student_logits=student_logits,
        )
        return w.to(device)

    def _mad_select(self, scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        sel = self.mad_config.select
        if sel.k is not None:
            return select_tokens(
                scores, mask, k=min(sel.k, scores.shape[1]), backend=self.mad_config.kernels
            )
        return select_tokens(
            scores, mask, ratio=sel.effective_ratio, backend=self.mad_config.kernels
        )

    def _mad_image_term(
        self,
        batch: MADBatch,
        student: StudentTokens,
        teach: MADTeacherOutputs,
        weights: Tensor,
        compute: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Image feature loss; returns (loss, n selected, n valid)."""
        cfg = self.mad_config
        if student.image_grid is None:
            raise ValueError(
                "StudentTokens.image_grid is None but select.modalities contains 'image'; give "
                "the student's patch grid (h, w) or distil text only"
            )
        b, n, d = student.hidden.shape
        gh, gw = student.image_grid
        is_img = (student.kinds == IMAGE) & student.mask
        counts = is_img.sum(1)
        require(
            counts == gh * gw,
            f"every instance needs image_grid {student.image_grid} = {gh * gw} valid IMAGE "
            "tokens in StudentTokens.kinds",
            detail=lambda: f", got {counts.tolist()}",
        )
        # the image tokens' positions in order (a stable sort puts them first): a gather, where
        # boolean indexing would wait for the device to count them
        img_pos = torch.sort(is_img.to(torch.uint8), dim=1, descending=True, stable=True)
        img_pos = img_pos.indices[:, : gh * gw]
        s_img = torch.gather(student.hidden, 1, img_pos.unsqueeze(-1).expand(-1, -1, d))
        image = teach.image
        target = resize_grid(image.tokens, image.grid, (gh, gw)).to(s_img.device).float()
        proj = self.mad_projectors["image"](s_img)
        mask = torch.ones(b, gh * gw, dtype=torch.bool, device=s_img.device)
        source = cfg.select.source
        kw: dict[str, Any] = {}
        if source == "relevance":
            kw["teacher_tokens_joint"] = resize_grid(image.tokens_joint, image.grid, (gh, gw))
            kw["other_pooled"] = teach.clip_text.pooled
        elif source == "attention" and image.attention is not None:
            kw["attention"] = resize_grid(image.attention.unsqueeze(-1), image.grid, (gh, gw))[
                ..., 0
            ]
        elif source == "discrepancy":
            kw["student_proj"], kw["teacher"] = proj, target
        elif source == "given":
            kw["given"] = torch.gather(_given(batch, (b, n)).to(img_pos.device), 1, img_pos)
        scores = compute_scores(source, loss=cfg.feat.loss, **kw).to(s_img.device)
        index, valid = self._mad_select(scores, mask)
        loss = (
            feature_distill_loss(proj, target, index, weights, cfg.feat.loss, backend=cfg.kernels)
            if compute
            else proj.new_zeros((), dtype=torch.float32)
        )
        return loss, valid.sum().float(), mask.sum().float()

    def _mad_text_term(
        self,
        batch: MADBatch,
        student: StudentTokens,
        teach: MADTeacherOutputs,
        weights: Tensor,
        compute: bool,
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, int]]:
        """Text feature loss at the word level; returns (loss, n selected, n valid, selection)."""
        cfg = self.mad_config
        if student.word_ids is None:
            raise ValueError(
                "StudentTokens.word_ids is None but select.modalities contains 'text'; give the "
                "word index of each text token (see mad_distill.align.split_words)"
            )
        b, n, _ = student.hidden.shape
        device = student.hidden.device
        n_words = max((len(split_words(t)) for t in batch.texts), default=0)
        n_words = max(n_words, 1)
        s_ids = torch.where((student.kinds == TEXT) & student.mask, student.word_ids, -1).long()
        require(
            s_ids < n_words,
            "StudentTokens.word_ids has word indices beyond the words of MADBatch.texts: "
            "the student must read the same texts the teachers get",
        )
        s_words, s_valid = pool_words(student.hidden, s_ids, n_words)
        target_out = teach.text if teach.text is not None else teach.clip_text
        t_words, t_valid = _pool_teacher_words(target_out, n_words, device)
        mask = s_valid & t_valid
        proj = self.mad_projectors["text"](s_words)
        target = t_words.float()
        source = cfg.select.source
        kw: dict[str, Any] = {}
        if source == "relevance":
            clip_text = teach.clip_text
            kw["teacher_tokens_joint"] = _pool_teacher_words(
                clip_text, n_words, device, clip_text.tokens_joint
            )[0]
            kw["other_pooled"] = teach.image.pooled.to(device)
        elif source == "attention" and target_out.attention is not None:
            kw["attention"] = _pool_teacher_words(
                target_out, n_words, device, target_out.attention.unsqueeze(-1)
            )[0][..., 0]
        elif source == "discrepancy":
            kw["student_proj"], kw["teacher"] = proj, target
        elif source == "given":
            kw["given"] = pool_words(_given(batch, (b, n)).unsqueeze(-1), s_ids, n_words)[0][..., 0]
        scores = compute_scores(source, loss=cfg.feat.loss, **kw).to(device)
        index, valid = self._mad_select(scores, mask)
        loss = (
            feature_distill_loss(proj, target, index, weights, cfg.feat.loss, backend=cfg.kernels)
            if compute
            else proj.new_zeros((), dtype=torch.float32)
        )
        return loss, valid.sum().float(), mask.sum().float(), (index, s_ids, n_words)

    def _mad_token_kl(
        self,
        student: StudentTokens,
        teach: MADTeacherOutputs,
        text_sel: tuple[Tensor, Tensor, int] | None,
        weights: Tensor,
    ) -> Tensor:
        cfg = self.mad_config
        if text_sel is None:
            raise ValueError(
                "kl.token_level with StudentTokens.mlm_logits needs 'text' in select.modalities "
                "(the KL uses the text token selection)"
            )
        if teach.text is None or teach.text.mlm_logits is None:
            raise ValueError(
                "StudentTokens.mlm_logits is given but the text teacher gives no MLM logits: use "
                "an 'hf-mlm:' text teacher, or set kl.token_level=False"
            )
        index, s_ids, n_words = text_sel
        device = student.hidden.device
        t_logits = _pool_teacher_words(teach.text, n_words, device, teach.text.mlm_logits)[0]
        if t_logits.shape[-1] != student.mlm_logits.shape[-1]:
            raise ValueError(
                f"StudentTokens.mlm_logits has vocabulary {student.mlm_logits.shape[-1]} but the "
                f"text teacher's MLM logits have {t_logits.shape[-1]}"
            )
        s_logits = pool_words(student.mlm_logits, s_ids, n_words)[0]
        return token_kl_loss(s_logits, t_logits, index, weights, cfg.kl.tau, backend=cfg.kernels)

    def _mad_log(self, parts: dict[str, Tensor], batch_size: int) -> None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None or getattr(self, "_current_fx_name", None) is None:
            return  # called outside the Trainer's control flow (e.g. a unit test)
        prefix = "mad/" if self.training else "val_mad/"
        for name, value in parts.items():
            self.log(
                prefix + name,
                value,
                batch_size=batch_size,
                prog_bar=name in ("feat", "kl"),
                sync_dist=not self.training,
            )

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the MAD config and the teachers' identities (never their weights)."""
        sup = getattr(super(), "on_save_checkpoint", None)
        if sup is not None:
            sup(checkpoint)
        if "_mad_config" not in self.__dict__:
            return
        cfg = self.mad_config.to_dict()
        cfg["teachers"] = {
            role: spec if isinstance(spec, str) else _teacher_name(self.mad_teachers[role])
            for role, spec in self.mad_config.teachers.items()
        }
        checkpoint["mad"] = {
            "format": _CKPT_FORMAT,
            "config": cfg,
            "teachers": self.mad_teacher_identities,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint made with other teachers than the configured ones."""
        sup = getattr(super(), "on_load_checkpoint", None)
        if sup is not None:
            sup(checkpoint)
        record = checkpoint.get("mad")
        if record is None or "_mad_config" not in self.__dict__:
            return
        saved = dict(record.get("teachers", {}))
        current = self.mad_teacher_identities
        if saved != current:
            lines = [
                f"  {role}: checkpoint {saved.get(role, '(none)')!r}, configured "
                f"{current.get(role, '(none)')!r}"
                for role in sorted(set(saved) | set(current))
                if saved.get(role) != current.get(role)
            ]
            raise ValueError(
                "this checkpoint was trained with other MAD teachers than the configured ones; "
                "resuming would mix teachers (projection heads are teacher-specific):\n"
                + "\n".join(lines)
                + "\nconfigure the same teachers (spec and weights), or load only the student's "
                "weights with load_state_dict(strict=False)"
            )


# ---------------------------------------------------------------------- helpers
def _check_role(role: str, teacher: Any) -> None:
    needs = {"clip": ("encode_image", "encode_text", "zero_shot_logits"), "text": ("encode_text",)}
    missing = [m for m in needs.get(role, ()) if not callable(getattr(teacher, m, None))]
    if missing or not isinstance(teacher, nn.Module):
        raise TypeError(
            f"teachers.{role} must be a teacher module with {needs.get(role)}, got "
            f"{type(teacher).__name__} (missing {missing})"
        )


def _teacher_name(teacher: Any) -> str:
    spec = getattr(teacher, "spec", None)
    if isinstance(spec, str):
        return spec
    describe = getattr(teacher, "describe", None)
    return describe() if callable(describe) else type(teacher).__name__


def _given(batch: MADBatch, shape: tuple[int, int]) -> Tensor:
    if batch.scores is None:
        raise ValueError("select.source='given' needs MADBatch.scores [B, N], got None")
    if tuple(batch.scores.shape) != tuple(shape):
        raise ValueError(
            f"MADBatch.scores must be [B, N] = {tuple(shape)} (one score per student token), "
            f"got {tuple(batch.scores.shape)}"
        )
    return batch.scores.float()


def _pool_teacher_words(
    out: TeacherTextOutput, n_words: int, device: torch.device, values: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-word mean of a teacher's ``values`` (default its tokens) over its valid tokens."""
    values = out.tokens if values is None else values
    ids = torch.where(out.mask.bool(), out.word_ids.long(), -1).to(values.device)
    # a teacher may see more words than the batch's longest text only if texts were changed
    ids = torch.where(ids < n_words, ids, -1)
    words, valid = pool_words(values, ids, n_words)
    return words.to(device), valid.to(device)


def _autocast_off() -> contextlib.ExitStack:
    """Leave any active autocast (CPU or CUDA) for the block."""
    stack = contextlib.ExitStack()
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def _all_reduce_sum() -> Any:
    """``torch.distributed.all_reduce`` when running with several processes, else ``None``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.all_reduce
    return None


__all__ = ["TEACHER_OUTPUTS", "MADMixin", "MADTeacherOutputs"]
