"""Loss-weight schedules ``lambda(t) = weight * lambda_at(schedule, t)`` (DESIGN.md section 1).

Conventions (those of ``transformers.get_cosine_schedule_with_warmup``): during warm-up the
factor is ``step / warmup_steps`` (0 at step 0); ``cosine`` then decays from 1 at
``warmup_steps`` to ``final_factor`` at ``total_steps`` and stays there.
"""

from __future__ import annotations

import math

from mad_distill.config import ScheduleConfig


def lambda_at(schedule: ScheduleConfig, step: int, total_steps: int | None = None) -> float:
    """Factor in ``[0, 1]`` of the schedule at optimizer step ``step`` (``>= 0``).

    Args:
        schedule: a :class:`~mad_distill.config.ScheduleConfig` (or a dict of its fields).
        step: the global step (``LightningModule.global_step``).
        total_steps: used when ``schedule.total_steps`` is ``None`` (e.g. the trainer's
            ``estimated_stepping_batches``); ``schedule.total_steps`` wins when both are set.
    """
    if isinstance(schedule, dict):
        schedule = ScheduleConfig(**schedule)
    if not isinstance(schedule, ScheduleConfig):
        raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if schedule.kind == "constant":
        return 1.0
    warmup = schedule.warmup_steps
    if step < warmup:
        return step / warmup
    if schedule.kind == "linear_warmup":
        return 1.0
    total = schedule.total_steps if schedule.total_steps is not None else total_steps
    if total is None:
        raise ValueError(
            "schedule.total_steps is None and no total_steps was passed; the cosine schedule "
            "needs the total number of steps"
        )
    if isinstance(total, float) and total.is_integer():
        total = int(total)  # Lightning's estimated_stepping_batches may be a float
    if isinstance(total, bool) or not isinstance(total, int) or total <= warmup:
        raise ValueError(
            f"total_steps must be an int > schedule.warmup_steps ({warmup}), got {total!r}"
        )
    progress = min(1.0, (step - warmup) / (total - warmup))
    final = schedule.final_factor
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
