"""Find the draft `--speculative` asks for, on the cluster: the one named, the one the model card's
command names, or one beside the model under the model root (``planning.speculative`` says which names
look like one, and checks what is found)."""

from __future__ import annotations

from ..config.options import ENGINES
from ..config.profiles import Profile
from ..edge.files import Files
from ..errors import InvalidOption, ModelNotFound
from ..planning.facts import ModelFacts
from ..planning.modelcard import card_advice
from ..planning.plan import DraftFound
from ..planning.speculative import draft_candidates
from .models import list_root, model_facts

__all__ = ["find_draft"]


def find_draft(profile: Profile, files: Files, target: ModelFacts, asked: str, *, scope: str = "") -> DraftFound:
    if asked != "auto":
        try:
            return DraftFound(model_facts(profile, files, asked, scope=scope), "your choice")
        except ModelNotFound as error:
            raise InvalidOption("speculative", f"The draft {error.message[0].lower()}{error.message[1:]}",
                                error.hint) from None
    named = []
    hints = [hint for engine in ENGINES if target.card and (hint := card_advice(target.card, engine).speculative)]
    for hint in hints:
        if hint.method == "mtp":
            return DraftFound(None, "the model card (the model's own MTP layers)", hint)
        if hint.draft and not hint.draft.startswith(("/", "~", "$")) and ".." not in hint.draft:
            # A card names a Hub id (Org/Name): looked for under the model root, never as a path of its own.
            named.append(hint.draft)
            for name in dict.fromkeys((hint.draft, hint.draft.rsplit("/", 1)[-1])):
                try:
                    return DraftFound(model_facts(profile, files, name, scope=scope), "the model card", hint)
                except ModelNotFound:
                    continue
    names = list_root(profile, files)
    for candidate in draft_candidates(target.name, names):
        try:
            return DraftFound(model_facts(profile, files, candidate, scope=scope), "beside the model under the "
                              "model root")
        except ModelNotFound:
            continue
    card = (f"its model card names {', '.join(named)}, which is not under {profile.model_root}"
            if named else "its model card names none")
    raise InvalidOption(
        "speculative",
        f"No draft model for {target.name}: {card}, and nothing beside it under {profile.model_root} is named like a "
        f"draft ({target.name}-EAGLE3, {target.name}_eagle3, {target.name}-draft).",
        "Put the draft under the model root, or name it: --speculative DRAFT.",
    )
