"""The three world tasks, mirroring VQA v2, SNLI-VE and VCR.

Each instance carries the student's side (question / hypothesis, answer or label, VCR choices) and
the teacher's zero-shot side: candidate texts (declarative prompts in the style of the teacher's
pretraining captions) and a *group* per candidate naming the class it votes for (``-1``: padding).
A class' zero-shot logit pools its candidates' logits (log-mean-exp by default, see
:func:`mad_distill.data.world.zero_shot.group_logits`) — a verbaliser with several label words per
class, as in prompt-based NLI; it lets one class be "any of these alternatives is true"
(contradiction) and restricts VQA answers to those the question type admits (the answer filter of
TAP-C, arXiv 2203.07190).

Task semantics:

- **vqa** — five question types (colour, count, relation, exists, size); answers over
  :data:`VQA_ANSWERS`; 10 simulated annotators (each right with probability 0.9, otherwise a random
  answer of the same type) give VQA soft scores ``min(#/3, 1)``.
- **snli_ve** — a hypothesis about the image. *Entailment*: a true statement. *Neutral*: a true
  statement plus a clause no image can verify ("... and it is made of wood"), as SNLI-VE's neutral
  hypotheses add unverifiable detail. *Contradiction*: a false statement (closed world), with such
  a clause half of the time.
- **vcr** — a question with 4 answers (Q→A) and 4 rationales (QA→R); wrong answers name other
  objects / colours / counts, wrong rationales give wrong positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mad_distill.data.world.scene import (
    COLOURS,
    GRID,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    WorldObject,
    article,
    count,
    count_phrase,
    find,
    holds,
    plural,
)

TASKS: tuple[str, ...] = ("vqa", "snli_ve", "vcr")
#: the VQA answer vocabulary (class index = position)
VQA_ANSWERS: tuple[str, ...] = COLOURS + SHAPES + ("0", "1", "2", "3") + ("yes", "no") + SIZES
VQA_QUESTION_TYPES: tuple[str, ...] = ("colour", "count", "relation", "exists", "size")
SNLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
#: what a CLIP teacher can tell apart on SNLI-VE (``MADConfig.class_groups``): the hypothesis
#: holds (entailment, neutral: its prompts differ by an unverifiable clause) or it does not
SNLI_CLASS_GROUPS: tuple[int, ...] = (0, 0, 1)
VCR_MODES: tuple[str, ...] = ("q2a", "qa2r")
#: fixed number of teacher candidates per instance (padded with group -1)
NUM_CANDIDATES: dict[str, int] = {"vqa": 9, "snli_ve": 11, "vcr": 4}
NUM_ANNOTATORS: int = 10
_ANNOTATOR_ACCURACY = 0.9
_UNVERIFIABLE = (
    "made of wood",
    "heavy",
    "drawn by a child",
    "about to move",
    "brand new",
    "very old",
    "hot to the touch",
    "owned by a girl",
)
_TASK_CODE = {t: i for i, t in enumerate(TASKS)}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; known: {list(TASKS)}")
    return task


def num_classes(task: str) -> int:
    """Classes of the task head: VQA answers, 3 SNLI-VE labels, 4 VCR choices."""
    return {"vqa": len(VQA_ANSWERS), "snli_ve": len(SNLI_LABELS), "vcr": 4}[check_task(task)]


@dataclass
class WorldInstance:
    """One task instance (before rendering).

    Attributes:
        text: the student's text (VQA question, SNLI-VE hypothesis, VCR question).
        label: VQA majority answer index, SNLI-VE label index, VCR answer index.
        qtype: question / statement type.
        candidates / groups: teacher zero-shot prompts and the class each votes for (-1 = pad).
        answers: VQA: the 10 annotators' answers; scores: VQA soft scores ``[len(VQA_ANSWERS)]``.
        choices / rationales / rationale_label: VCR answer and rationale choices.
        rationale_candidates: VCR teacher prompts for the rationales (groups = 0..3).
    """

    task: str
    text: str
    label: int
    qtype: str
    candidates: list[str]
    groups: list[int]
    answers: list[str] | None = None
    scores: np.ndarray | None = None
    choices: list[str] | None = None
    rationales: list[str] | None = None
    rationale_label: int = -1
    rationale_candidates: list[str] = field(default_factory=list)


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _pad(task: str, cands: list[str], groups: list[int]) -> tuple[list[str], list[int]]:
    k = NUM_CANDIDATES[task]
    if len(cands) > k:
        raise AssertionError(f"{task}: {len(cands)} candidates > {k}")
    return cands + [cands[0]] * (k - len(cands)), groups + [-1] * (k - len(groups))


def make_instance(task: str, scene: Scene, rng: np.random.Generator) -> WorldInstance:
    """Draw one instance of ``task`` about ``scene``."""
    check_task(task)
    if task == "vqa":
        return _vqa(scene, rng)
    if task == "snli_ve":
        return _snli(scene, rng)
    return _vcr(scene, rng)


# ----------------------------------------------------------------------------------- VQA
def _answer_type(qtype: str) -> tuple[str, ...]:
    return {
        "colour": COLOURS,
        "count": ("0", "1", "2", "3"),
        "relation": SHAPES,
        "exists": ("yes", "no"),
        "size": SIZES,
    }[qtype]


def _relation_query(scene: Scene, rng: np.random.Generator):
    """(rel, ref, shape of the object(s) in that relation) with a unique answer shape, or None."""
    options = []
    for ref in scene:
        for rel in RELATIONS:
            objs = [o for o in scene if o is not ref and holds(rel, o, ref)]
            if objs and len({o.shape for o in objs}) == 1:
                options.append((rel, ref, objs))
    return _pick(rng, options) if options else None


def _vqa(scene: Scene, rng: np.random.Generator) -> WorldInstance:
    while True:
        qtype = _pick(rng, VQA_QUESTION_TYPES)
        if qtype == "colour":
            unique = [o for o in scene if count(scene, shape=o.shape) == 1]
            if not unique:
                continue
            o = _pick(rng, unique)
            question = f"what colour is the {o.shape}?"
            answer = o.colour
            cands = [f"{article(c + ' ' + o.shape)}." for c in COLOURS]
            groups = [VQA_ANSWERS.index(c) for c in COLOURS]
        elif qtype == "count":
            shape = _pick(rng, scene).shape if rng.random() < 0.75 else _pick(rng, SHAPES)
            question = f"how many {plural(shape)} are there?"
            answer = str(count(scene, shape=shape))
            cands = [f"{count_phrase(n, shape)}." for n in range(4)]
            groups = [VQA_ANSWERS.index(str(n)) for n in range(4)]
        elif qtype == "relation":
            q = _relation_query(scene, rng)
            if q is None:
                continue
            rel, ref, objs = q
            question = f"what shape is {rel} the {ref.name}?"
            answer = objs[0].shape
            cands = [f"{article(s)} {rel} {article(ref.name)}." for s in SHAPES]
            groups = [VQA_ANSWERS.index(s) for s in SHAPES]
        elif qtype == "exists":
            o = _pick(rng, scene)
            shape, colour = o.shape, o.colour
            if rng.random() < 0.5:  # ask about an absent object half of the time
                while count(scene, shape=shape, colour=colour):
                    if rng.random() < 0.5:
                        colour = _pick(rng, COLOURS)
                    else:
                        shape = _pick(rng, SHAPES)
            question = f"is there {article(colour + ' ' + shape)}?"
            answer = "yes" if count(scene, shape=shape, colour=colour) else "no"
            cands = [f"{article(colour + ' ' + shape)}."]
            cands += [f"{article(c + ' ' + shape)}." for c in COLOURS if c != colour]
            cands += [f"{article(colour + ' ' + s)}." for s in SHAPES if s != shape]
            groups = [VQA_ANSWERS.index("yes")] + [VQA_ANSWERS.index("no")] * (len(cands) - 1)
        else:  # size
            o = _pick(rng, scene)
            question = f"what size is the {o.name}?"
            answer = o.size
            cands = [f"{article(s + ' ' + o.name)}." for s in SIZES]
            groups = [VQA_ANSWERS.index(s) for s in SIZES]
        break
    # simulated annotators (VQA v2 collects 10 answers per question)
    pool = [a for a in _answer_type(qtype) if a != answer]
    answers = [
        answer if rng.random() < _ANNOTATOR_ACCURACY else _pick(rng, pool)
        for _ in range(NUM_ANNOTATORS)
    ]
    counts = np.array([answers.count(a) for a in VQA_ANSWERS], np.float32)
    scores = np.minimum(counts / 3.0, 1.0)
    top = counts.max()
    label = (
        VQA_ANSWERS.index(answer)
        if counts[VQA_ANSWERS.index(answer)] == top
        else int(np.argmax(counts))
    )
    cands, groups = _pad("vqa", cands, groups)
    return WorldInstance(
        "vqa", question, label, qtype, cands, groups, answers=answers, scores=scores
    )


# ------------------------------------------------------------------------------- SNLI-VE
def _statement(scene: Scene, rng: np.random.Generator, truth: bool):
    """(statement type, core text, alternative texts, plural subject) with the given truth value.

    The alternatives enumerate the statement's slot (every other colour / shape / relation /
    count / size), built from the statement alone; when the statement is false one of them is
    usually true.
    """
    while True:
        kind = _pick(rng, ("exists", "colour", "relation", "count", "size"))
        if kind == "exists":
            o = _pick(rng, scene)
            shape, colour = o.shape, o.colour
            if not truth:
                while count(scene, shape=shape, colour=colour):
                    if rng.random() < 0.5:
                        colour = _pick(rng, COLOURS)
                    else:
                        shape = _pick(rng, SHAPES)
            alts = [f"there is {article(c + ' ' + shape)}" for c in COLOURS if c != colour]
            alts += [f"there is {article(colour + ' ' + s)}" for s in SHAPES if s != shape]
            return kind, f"there is {article(colour + ' ' + shape)}", alts, False
        if kind == "colour":
            unique = [o for o in scene if count(scene, shape=o.shape) == 1]
            if not unique:
                continue
            o = _pick(rng, unique)
            colour = o.colour if truth else _pick(rng, [c for c in COLOURS if c != o.colour])
            alts = [f"the {o.shape} is {c}" for c in COLOURS if c != colour]
            return kind, f"the {o.shape} is {colour}", alts, False
        if kind == "relation":
            if len(scene) < 2:
                continue
            i, j = rng.choice(len(scene), size=2, replace=False)
            a, b = scene[int(i)], scene[int(j)]
            rels = [r for r in RELATIONS if holds(r, a, b) == truth]
            rel = _pick(rng, rels)
            alts = [f"the {a.name} is {r} the {b.name}" for r in RELATIONS if r != rel]
            return kind, f"the {a.name} is {rel} the {b.name}", alts, False
        if kind == "count":
            shape = _pick(rng, scene).shape
            n = count(scene, shape=shape)
            if not truth:
                n = _pick(rng, [m for m in range(4) if m != n])
            if n == 0:
                continue  # "no circles and they are heavy" is not a statement about anything
            alts = [f"there {'is' if m == 1 else 'are'} {count_phrase(m, shape)}" for m in range(4)]
            text = f"there {'is' if n == 1 else 'are'} {count_phrase(n, shape)}"
            return kind, text, [t for t in alts if t != text], n > 1
        o = _pick(rng, scene)
        size = o.size if truth else _pick(rng, [s for s in SIZES if s != o.size])
        alts = [f"the {o.name} is {s}" for s in SIZES if s != size]
        return "size", f"the {o.name} is {size}", alts, False


def _clause(rng: np.random.Generator, plural_subject: bool) -> str:
    return f" and {'they are' if plural_subject else 'it is'} {_pick(rng, _UNVERIFIABLE)}"


def _snli(scene: Scene, rng: np.random.Generator) -> WorldInstance:
    label = int(rng.integers(3))
    kind, core, alts, plural_subject = _statement(scene, rng, truth=label != 2)
    clause = _clause(rng, plural_subject)
    has_clause = label == 1 or (label == 2 and rng.random() < 0.5)
    hypothesis = core + (clause if has_clause else "") + "."
    # E: the bare statement; N: the statement with an unverifiable clause (its own, or a drawn
    # one); C: any alternative value of the statement's slot.
    cands = [core + ".", core + clause + "."] + [a + "." for a in alts]
    groups = [0, 1] + [2] * len(alts)
    cands, groups = _pad("snli_ve", cands, groups)
    return WorldInstance("snli_ve", hypothesis, label, kind, cands, groups)


# ----------------------------------------------------------------------------------- VCR
def _cell_phrase(row: int, col: int) -> str:
    return WorldObject("circle", "red", "small", row, col).position


def _wrong_positions(rng: np.random.Generator, objs: list[WorldObject], k: int) -> list[list[str]]:
    """``k`` distinct position assignments for ``objs`` that differ from the true one."""
    true = tuple(o.position for o in objs)
    seen = {true}
    out: list[list[str]] = []
    while len(out) < k:
        cells = rng.choice(GRID * GRID, size=len(objs), replace=False)
        pos = tuple(_cell_phrase(*divmod(int(c), GRID)) for c in cells)
        if pos not in seen:
            seen.add(pos)
            out.append(list(pos))
    return out


def _positions_text(objs: list[WorldObject], positions: list[str]) -> str:
    parts = [f"{article(o.name)} at the {p}" for o, p in zip(objs, positions)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _vcr(scene: Scene, rng: np.random.Generator) -> WorldInstance:
    while True:
        qtype = _pick(rng, ("which", "colour", "count"))
        if qtype == "which":
            opts = []
            for ref in scene:
                for rel in RELATIONS:
                    objs = [o for o in scene if o is not ref and holds(rel, o, ref)]
                    if len(objs) == 1:
                        opts.append((rel, ref, objs[0]))
            if not opts:
                continue
            rel, ref, obj = _pick(rng, opts)
            question = f"which object is {rel} the {ref.name}?"
            # wrong answers: the other objects of the scene, then absent objects
            wrong = [o.name for o in scene if o is not obj]
            while len(wrong) < 3:
                name = f"{_pick(rng, COLOURS)} {_pick(rng, SHAPES)}"
                if name != obj.name and name not in wrong:
                    wrong.append(name)
            names = [obj.name] + wrong[:3]
            answers = [f"the {n}." for n in names]
            answer_prompts = [f"{article(n)} {rel} {article(ref.name)}." for n in names]
            evidence = [obj, ref]
        elif qtype == "colour":
            unique = [o for o in scene if count(scene, shape=o.shape) == 1]
            if not unique:
                continue
            obj = _pick(rng, unique)
            question = f"what colour is the {obj.shape}?"
            colours = [obj.colour] + list(
                rng.choice([c for c in COLOURS if c != obj.colour], 3, replace=False)
            )
            answers = [f"it is {c}." for c in colours]
            answer_prompts = [f"{article(c + ' ' + obj.shape)}." for c in colours]
            evidence = [obj]
        else:
            shape = _pick(rng, scene).shape
            n = count(scene, shape=shape)
            question = f"how many {plural(shape)} are there?"
            ns = [n] + [m for m in range(4) if m != n]
            answers = [f"{count_phrase(m, shape)}." for m in ns]
            answer_prompts = list(answers)
            evidence = find(scene, shape=shape)
        break
    true_pos = [o.position for o in evidence]
    rat_pos = [true_pos] + _wrong_positions(rng, evidence, 3)
    rationale_prompts = [_positions_text(evidence, p) + "." for p in rat_pos]
    rationales = ["because there is " + r for r in rationale_prompts]
    a_perm, r_perm = rng.permutation(4), rng.permutation(4)
    return WorldInstance(
        "vcr",
        question,
        int(np.argmin(a_perm)),  # position of the original index 0 after permuting
        qtype,
        [answer_prompts[i] for i in a_perm],
        [0, 1, 2, 3],
        choices=[answers[i] for i in a_perm],
        rationales=[rationales[i] for i in r_perm],
        rationale_label=int(np.argmin(r_perm)),
        rationale_candidates=[rationale_prompts[i] for i in r_perm],
    )
