"""RadGraph word splitting and RadGraph-F1 rewards (pure Python; the model is in `radgraph`).

Words: the radgraph package's preprocessing per model type. "radgraph": a space inserted around
/ , - : . ! ? ( ) (the package's regular expression, kept verbatim with its quirks);
"radgraph-xl": escaped newlines dropped, NLTK's wordpunct split (\\w+ or runs of other
non-space characters) and its fix-ups of ")." "%." ".'" "%," "%)".

Rewards (`radgraph.rewards`, Delbrouck et al. 2022): F1 between the sets of facts of the
generated and the reference report: (tokens, label) of every entity [simple]; (tokens, label)
for entities without relations and (tokens, label, True) for those with one [partial, "RG_ER",
the variant most papers report as RadGraph-F1]; (tokens, label) or (tokens, label, relation,
object tokens) per relation [complete]. Tokens lowercased (the maintained code; radgraph <= 0.1.18
on PyPI compared entity tokens case-sensitively outside relation facts: `legacy_case`); 0 when
either report has no entity.
"""

from __future__ import annotations

import re
from typing import Any

MODEL_TYPES = ("radgraph", "radgraph-xl")
ARCHIVES = {"radgraph": "radgraph.tar.gz", "radgraph-xl": "radgraph-xl.tar.gz"}
REWARD_LEVELS = ("simple", "partial", "complete")
_RADGRAPH_SPLIT = re.compile("(?<! )(?=[/,-,:,.,!?()])|(?<=[/,-,:,.,!?()])(?! )")  # as in radgraph.utils
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")  # NLTK's wordpunct_tokenize
_XL_FIXES = ((").", ") ."), ("%.", "% ."), (".'", ". '"), ("%,", "% ,"), ("%)", "% )"))

Annotation = dict[str, Any]  # {"text", "entities": {"1": {"tokens", "label", "start_ix", "end_ix", "relations"}}}


def words_of(report: str, model_type: str = "radgraph") -> list[str]:
    """The model's input words for one report, split as the radgraph package splits them."""
    if model_type == "radgraph":
        return _RADGRAPH_SPLIT.sub(" ", report).split()
    if model_type == "radgraph-xl":
        text = report.replace("\\n", "  ").replace("\\f", "  ").replace("\\u2122", "      ").replace("\n", " ")
        text = " ".join(_WORDPUNCT.findall(re.sub(r"\s+", " ", text.replace('\\"', "``"))))
        for old, new in _XL_FIXES:
            text = text.replace(old, new)
        return text.split()
    raise ValueError(f"model type must be one of {MODEL_TYPES}, got {model_type!r}")


def _facts(annotation: Annotation, level: str, legacy_case: bool = False) -> set[tuple[Any, ...]]:
    entities = annotation["entities"]
    facts: set[tuple[Any, ...]] = set()
    for entity in entities.values():
        tokens = entity["tokens"] if legacy_case else entity["tokens"].lower()
        if not entity["relations"] or level == "simple":
            facts.add((tokens, entity["label"]))
        elif level == "partial":
            facts.add((tokens, entity["label"], True))
        else:  # relation facts were lowercased in every version
            facts.update(
                (entity["tokens"].lower(), entity["label"], rel, entities[obj]["tokens"].lower())
                for rel, obj in entity["relations"]
            )
    return facts


def _f1(hypothesis: set, reference: set) -> float:
    common = len(hypothesis & reference)
    precision = common / len(hypothesis) if hypothesis else 0.0
    recall = common / len(reference) if reference else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def rewards(hypothesis: Annotation, reference: Annotation, legacy_case: bool = False) -> dict[str, float]:
    """RadGraph-F1 of one generated report against its reference: {"simple", "partial", "complete"}.

    `legacy_case` reproduces radgraph <= 0.1.18 (PyPI), which compared the tokens of entities as
    written except in relation facts; the maintained code (and the default) lowercases all of them.
    """
    if not hypothesis["entities"] or not reference["entities"]:
        return dict.fromkeys(REWARD_LEVELS, 0.0)
    return {
        level: _f1(_facts(hypothesis, level, legacy_case), _facts(reference, level, legacy_case))
        for level in REWARD_LEVELS
    }
