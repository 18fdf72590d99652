"""``MADConfig``: the validated configuration of Multimodal Adaptive Distillation.

Every field is checked when the config is built; a bad value raises ``ValueError`` (or
``TypeError`` for a wrong type) whose message starts with the field path, e.g. ``select.ratio``,
and lists the allowed values. Nested parts accept plain dicts (``select=dict(ratio=0.3)``), so a
config can be written in Python, read from YAML by LightningCLI / jsonargparse, and rebuilt from
:meth:`MADConfig.to_dict` (stored in checkpoints) with :meth:`MADConfig.from_dict`.

Defaults are our design (the MAD / CLIP-TD abstracts do not fix them, DESIGN.md section 1):
relevance-scored token selection with ratio 0.3 per modality, ``gt_prob`` confidence weights
with gamma 1, cosine feature loss with weight 1, KL with tau 2 and weight 0.5, constant schedules.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCORE_SOURCES = ("relevance", "attention", "discrepancy", "given")
MODALITIES = ("image", "text")
WEIGHT_MODES = ("gt_prob", "entropy", "correct", "uniform", "gain")
FEATURE_LOSSES = ("cosine", "mse", "smooth_l1")
PROJECTORS = ("linear", "mlp")
SCHEDULES = ("constant", "linear_warmup", "cosine")
KERNELS = ("auto", "triton", "reference")
TEACHER_ROLES = ("clip", "text")

#: default selection ratio, used when neither ``k`` nor ``ratio`` is given
DEFAULT_RATIO = 0.3

# field path of the part being built: nested parts built from dicts report errors under it
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("mad_config_path", default=None)


# ---------------------------------------------------------------------------------- checks
def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{path} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{path} must not be NaN")
    return value


def _nonneg(value: Any, path: str) -> float:
    value = _number(value, path)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{path} must be a finite number >= 0, got {value!r}")
    return value


def _integer(value: Any, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{path} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{path} must be >= {minimum}, got {value!r}")
    return value


def _choice(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{path} must be one of {allowed}, got {value!r}")
    return value


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{path} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _coerce(cls: type, value: Any, path: str) -> Any:
    """Build the nested part ``cls`` at ``path`` from an instance or a dict."""
    if isinstance(value, cls):
        value._check(path)
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{path} must be a {cls.__name__} or a dict, got {type(value).__name__} {value!r}"
        )
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in value if key not in names]
    if unknown:
        raise ValueError(f"{path} has unknown field(s) {unknown}; allowed: {tuple(names)}")
    token = _PATH.set(path)
    try:
        return cls(**value)
    finally:
        _PATH.reset(token)


def _part_to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _part_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)  # YAML / JSON friendly
        out[f.name] = value
    return out


class _Part:
    """Validation plumbing shared by the nested parts."""

    _default_path = ""

    def __post_init__(self) -> None:
        self._check(_PATH.get() or self._default_path)

    def _check(self, path: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (lists instead of tuples) that rebuilds this part."""
        return _part_to_dict(self)


# ---------------------------------------------------------------------------------- parts
@dataclass
class ScheduleConfig(_Part):
    """Schedule of a loss weight ``lambda(t) = weight * lambda_at(schedule, t)``.

    Args:
        kind: ``constant`` (1), ``linear_warmup`` (0 -> 1 over ``warmup_steps``, then 1) or
            ``cosine`` (linear warm-up, then cosine decay to ``final_factor`` at ``total_steps``:
            distil early, let the task take over).
        warmup_steps: length of the linear warm-up (``linear_warmup`` and ``cosine``).
        total_steps: end of the cosine decay; ``None`` lets the caller pass the trainer's
            estimated total (``MADMixin`` uses ``trainer.estimated_stepping_batches``).
        final_factor: value of the cosine schedule at and after ``total_steps``, in ``[0, 1]``.
    """

    kind: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    final_factor: float = 0.0

    _default_path = "schedule"

    def _check(self, path: str) -> None:
        self.kind = _choice(self.kind, f"{path}.kind", SCHEDULES)
        self.warmup_steps = _integer(self.warmup_steps, f"{path}.warmup_steps", 0)
        if self.total_steps is not None:
            self.total_steps = _integer(self.total_steps, f"{path}.total_steps", 1)
        self.final_factor = _nonneg(self.final_factor, f"{path}.final_factor")
        if self.final_factor > 1:
            raise ValueError(f"{path}.final_factor must be in [0, 1], got {self.final_factor!r}")
        if self.kind == "constant" and self.warmup_steps:
            raise ValueError(
                f"{path}.warmup_steps must be 0 for kind='constant' (got {self.warmup_steps}); "
                "use kind='linear_warmup' or 'cosine' for a warm-up"
            )
        if (
            self.kind == "cosine"
            and self.total_steps is not None
            and self.warmup_steps >= self.total_steps
        ):
            raise ValueError(
                f"{path}.warmup_steps ({self.warmup_steps}) must be < {path}.total_steps "
                f"({self.total_steps}) for kind='cosine'"
            )


@dataclass
class SelectConfig(_Part):
    """Token selection (TS), per instance and per modality (DESIGN.md section 1).

    Args:
        source: token score: ``relevance`` (cosine of each teacher token with the other
            modality's pooled CLIP embedding), ``attention`` (teacher's last-layer CLS
            attention), ``discrepancy`` (student-teacher distance after projection) or
            ``given`` (``MADBatch.scores``).
        ratio: keep ``ceil(ratio * n_valid)`` tokens per instance, ``0 < ratio <= 1``. Default
            0.3 when ``k`` is not given; give ``k`` *or* ``ratio``, not both.
        k: keep a fixed ``min(k, n_valid)`` tokens per instance, ``k >= 1``.
        modalities: which student tokens are distilled: any of ``("image", "text")``.
    """

    source: str = "relevance"
    ratio: float | None = None
    k: int | None = None
    modalities: tuple[str, ...] = MODALITIES

    _default_path = "select"

    def _check(self, path: str) -> None:
        self.source = _choice(self.source, f"{path}.source", SCORE_SOURCES)
        if self.k is not None and self.ratio is not None:
            raise ValueError(
                f"{path}.k and {path}.ratio are both set (k={self.k!r}, ratio={self.ratio!r}); "
                "give one of them"
            )
        if self.k is not None:
            self.k = _integer(self.k, f"{path}.k", 1)
        if self.ratio is not None:
            ratio = _number(self.ratio, f"{path}.ratio")
            if not 0 < ratio <= 1:
                raise ValueError(f"{path}.ratio must be in (0, 1], got {ratio!r}")
            self.ratio = ratio
        mods = self.modalities
        if isinstance(mods, str) or not isinstance(mods, (list, tuple)):
            raise TypeError(f"{path}.modalities must be a list/tuple of {MODALITIES}, got {mods!r}")
        for m in mods:
            _choice(m, f"{path}.modalities", MODALITIES)
        if not mods or len(set(mods)) != len(mods):
            raise ValueError(
                f"{path}.modalities must be a non-empty list of distinct values from "
                f"{MODALITIES}, got {list(mods)!r}"
            )
        self.modalities = tuple(mods)

    @property
    def effective_ratio(self) -> float | None:
        """The ratio in force: ``ratio``, or :data:`DEFAULT_RATIO` when neither ``k`` nor
        ``ratio`` is set, or ``None`` when ``k`` is set. (``ratio`` itself stays ``None`` when
        not given, so a config read from YAML with only ``k`` set does not gain a ratio.)"""
        if self.k is not None:
            return None
        return DEFAULT_RATIO if self.ratio is None else self.ratio


@dataclass
class WeightConfig(_Part):
    """Confidence weighting (CW) of each instance from the teacher's zero-shot probabilities.

    Args:
        mode: ``gt_prob`` (``p_t(y)^gamma``), ``entropy`` (``(1 - H(p_t)/log C)^gamma``),
            ``correct`` (``1[argmax p_t = y]``), ``uniform``, or ``gain``
            (``max(p_t(y) - p_s(y), 0)^gamma`` with the student's own detached probability
            ``p_s``; absolute, not normalised to batch mean 1).
        gamma: sharpness exponent for ``gt_prob``, ``entropy`` and ``gain``, ``>= 0``.
    """

    mode: str = "gt_prob"
    gamma: float = 1.0

    _default_path = "weight"

    def _check(self, path: str) -> None:
        self.mode = _choice(self.mode, f"{path}.mode", WEIGHT_MODES)
        self.gamma = _nonneg(self.gamma, f"{path}.gamma")


@dataclass
class FeatConfig(_Part):
    """Feature distillation on selected tokens.

    Args:
        loss: ``cosine`` (1 - cos), ``mse`` or ``smooth_l1`` on L2-normalised features.
        weight: ``lambda_feat``, ``>= 0`` (0 turns the feature loss off).
        projector: student-to-teacher projection head, ``linear`` or ``mlp`` (2 layers).
        schedule: schedule of ``weight`` over training steps.
    """

    loss: str = "cosine"
    weight: float = 1.0
    projector: str = "linear"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    _default_path = "feat"

    def _check(self, path: str) -> None:
        self.loss = _choice(self.loss, f"{path}.loss", FEATURE_LOSSES)
        self.weight = _nonneg(self.weight, f"{path}.weight")
        self.projector = _choice(self.projector, f"{path}.projector", PROJECTORS)
        self.schedule = _coerce(ScheduleConfig, self.schedule, f"{path}.schedule")


@dataclass
class KLConfig(_Part):
    """KL distillation ``tau^2 KL(softmax(z_t/tau) || softmax(z_s/tau))``.

    Args:
        tau: temperature, ``> 0``.
        weight: ``lambda_kl``, ``>= 0`` (0 turns KL off).
        token_level: KL on selected text tokens (teacher MLM logits vs the student's MLM head).
        instance_level: KL on the pooled token (teacher zero-shot logits vs student task logits).
        schedule: schedule of ``weight`` over training steps.
    """

    tau: float = 2.0
    weight: float = 0.5
    token_level: bool = True
    instance_level: bool = True
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    _default_path = "kl"

    def _check(self, path: str) -> None:
        tau = _number(self.tau, f"{path}.tau")
        if not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"{path}.tau must be a finite number > 0, got {tau!r}")
        self.tau = tau
        self.weight = _nonneg(self.weight, f"{path}.weight")
        self.token_level = _flag(self.token_level, f"{path}.token_level")
        self.instance_level = _flag(self.instance_level, f"{path}.instance_level")
        self.schedule = _coerce(ScheduleConfig, self.schedule, f"{path}.schedule")


# ---------------------------------------------------------------------------------- config
def _check_teachers(teachers: Any) -> dict[str, Any]:
    if not isinstance(teachers, Mapping):
        raise TypeError(
            f"teachers must be a dict mapping roles {TEACHER_ROLES} to teacher specs, got "
            f"{type(teachers).__name__}"
        )
    if not teachers:
        raise ValueError(f"teachers must name at least one teacher; roles: {TEACHER_ROLES}")
    # lazy: the teachers package imports open_clip / transformers
    from mad_distill.teachers.base import Teacher
    from mad_distill.teachers.factory import TeacherSpec, parse_teacher_spec

    out: dict[str, Any] = {}
    for role, spec in teachers.items():
        if role not in TEACHER_ROLES:
            raise ValueError(f"teachers has unknown role {role!r}; allowed roles: {TEACHER_ROLES}")
        path = f"teachers.{role}"
        if isinstance(spec, str):
            try:
                parse_teacher_spec(spec)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from err
        elif not isinstance(spec, (Teacher, TeacherSpec)):
            raise TypeError(
                f"{path} must be a teacher spec string (e.g. 'open_clip:ViT-B-32@/path.pt', "
                f"'hf:/local/dir'), a TeacherSpec or a Teacher, got {type(spec).__name__} "
                f"{spec!r}"
            )
        out[role] = spec
    return out


def _spec_string(teacher: Any, path: str) -> str:
    """The spec string of a TeacherSpec, or of a Teacher that records one in ``.spec``."""
    from mad_distill.teachers.factory import TeacherSpec

    if isinstance(teacher, TeacherSpec):
        return str(teacher)
    spec = getattr(teacher, "spec", None)
    if isinstance(spec, TeacherSpec):
        return str(spec)
    if isinstance(spec, str):
        return spec
    raise ValueError(
        f"{path} is a {type(teacher).__name__} without a 'spec' string, so it cannot be "
        "serialised; configure it by spec string (teachers are rebuilt from specs, never saved)"
    )


@dataclass
class MADConfig:
    """Configuration of MAD distillation (DESIGN.md sections 1 and 3).

    Args:
        teachers: role -> teacher. Roles: ``clip`` (open_clip image + text teacher: needed for
            image tokens, ``relevance`` scores, confidence weights and instance-level KL) and
            ``text`` (HF text teacher for text tokens; without it text tokens are distilled
            against the CLIP text tower). Values are spec strings for
            :func:`mad_distill.teachers.factory.create_teacher` (``"open_clip:ViT-B-32@/w.pt"``,
            ``"hf:/local/dir"``), :class:`~mad_distill.teachers.factory.TeacherSpec` or built
            :class:`~mad_distill.teachers.base.Teacher` objects.
        select: token selection, :class:`SelectConfig` or a dict of its fields.
        weight: confidence weighting, :class:`WeightConfig` or a dict.
        feat: feature loss, :class:`FeatConfig` or a dict.
        kl: KL losses, :class:`KLConfig` or a dict.
        kernels: ``auto`` (Triton on CUDA when available, else the PyTorch reference),
            ``triton`` or ``reference``.
        class_groups: what the CLIP teacher's zero-shot scores can tell apart, one group id per
            task class (``None``: every class). With it the instance-level KL and the confidence
            weights compare group probabilities (:mod:`mad_distill.class_groups`); SNLI-VE with
            CLIP: ``[0, 0, 1]`` (entailment and neutral are one group, contradiction the other).

    Example:
        >>> MADConfig(teachers={"clip": my_clip}, select=dict(source="attention", k=8))
    """

    teachers: dict[str, Any]
    select: SelectConfig = field(default_factory=SelectConfig)
    weight: WeightConfig = field(default_factory=WeightConfig)
    feat: FeatConfig = field(default_factory=FeatConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    kernels: str = "auto"
    class_groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> MADConfig:
        """Re-check every field (call after mutating a built config). Returns ``self``."""
        self.teachers = _check_teachers(self.teachers)
        self.select = _coerce(SelectConfig, self.select, "select")
        self.weight = _coerce(WeightConfig, self.weight, "weight")
        self.feat = _coerce(FeatConfig, self.feat, "feat")
        self.kl = _coerce(KLConfig, self.kl, "kl")
        self.kernels = _choice(self.kernels, "kernels", KERNELS)
        if self.class_groups is not None:
            from mad_distill.class_groups import check_class_groups

            self.class_groups = check_class_groups(self.class_groups)
        self._check_roles()
        return self

    def _check_roles(self) -> None:
        if "clip" in self.teachers:
            return
        # without the CLIP teacher there is no image target, no cross-modal relevance, no
        # zero-shot probabilities; say which setting needs it
        needs = []
        if "image" in self.select.modalities:
            needs.append("select.modalities contains 'image'")
        if self.select.source == "relevance":
            needs.append("select.source='relevance'")
        if self.weight.mode != "uniform":
            needs.append(f"weight.mode={self.weight.mode!r}")
        if self.kl.instance_level and self.kl.weight > 0:
            needs.append("kl.instance_level=True")
        if needs:
            raise ValueError(
                "teachers has no 'clip' teacher, which " + "; ".join(needs) + " requires; add "
                "teachers['clip'] or change those fields"
            )

    @property
    def teacher_roles(self) -> tuple[str, ...]:
        return tuple(self.teachers)

    def to_dict(self, serializable: bool = False) -> dict[str, Any]:
        """Plain nested dict that :meth:`from_dict` turns back into an equal config.

        With ``serializable=True`` teacher objects are replaced by their ``spec`` string
        attribute (raising if they have none), so the dict can go to YAML / a checkpoint without
        teacher weights in it.
        """
        teachers: dict[str, Any] = {}
        for role, spec in self.teachers.items():
            if serializable and not isinstance(spec, str):
                spec = _spec_string(spec, f"teachers.{role}")
            teachers[role] = spec
        return {
            "teachers": teachers,
            "select": self.select.to_dict(),
            "weight": self.weight.to_dict(),
            "feat": self.feat.to_dict(),
            "kl": self.kl.to_dict(),
            "kernels": self.kernels,
            "class_groups": None if self.class_groups is None else list(self.class_groups),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MADConfig:
        """Build a config from :meth:`to_dict` output (or any dict of the same shape)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"MADConfig.from_dict needs a dict, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in data if key not in names]
        if unknown:
            raise ValueError(f"MADConfig has unknown field(s) {unknown}; allowed: {tuple(names)}")
        if "teachers" not in data:
            raise ValueError("teachers is required")
        return cls(**dict(data))
