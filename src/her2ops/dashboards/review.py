"""Review page (pathologists, admins): claim the next flagged core, look at it, score it.

"Next core" claims the top item of the review queue for the acting user (or returns their live
claim); every rerun of the page while an item is held renews its lease, so the claim lives as long
as the page is used. What the page shows of an item is what the service's view holds
(``platform/review_view.py``): on a blinded item a pathologist gets the core only; otherwise the
other votes, the consensus and the model's KCS sets with their classes. Every action is a review
use case (``pipelines.review``), which checks the role and the claim's fencing token itself; a
refused action is one line on the page and nothing is recorded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from her2ops.dashboards.session import current_user
from her2ops.dashboards.ui import escape_markdown
from her2ops.errors import Her2opsError
from her2ops.pipelines import review as uc

#: Roles offered the page (admins too); the use cases check ``votes.cast`` again.
ROLES = ("pathologist",)
SCORES = ("0", "1+", "2+", "3+", "ND")
#: keyboard shortcuts of the score buttons (with Alt, so typing a comment never scores)
SHORTCUTS = {"0": "Alt+0", "1+": "Alt+1", "2+": "Alt+2", "3+": "Alt+3", "ND": "Alt+N"}
ITEM_KEY = "review_item"
MESSAGE_KEY = "review_message"
COMMENT_KEY = "review_comment"


def may_review(user: dict[str, Any] | None) -> bool:
    return bool(user) and (user["role"] == "admin" or user["role"] in ROLES)  # type: ignore[index]


def render() -> None:
    user = current_user()
    if not may_review(user):
        st.error(f"This page is not available to you: it needs role {' or '.join(ROLES)}.")
        st.stop()
    assert user is not None
    actor = user["username"]
    st.title("Review")
    item: dict[str, Any] | None = st.session_state.get(ITEM_KEY)
    if item is not None:
        item = _renew(actor, item)
    _show_message()
    if item is None:
        st.button("Next core", key="review_next", on_click=_next, args=(actor,), type="primary")
        return
    _show_item(actor, item)
    _actions(actor)


# --- state changes (button callbacks: they run before the page renders) ----------------------


def _say(kind: str, text: str) -> None:
    st.session_state[MESSAGE_KEY] = (kind, text)


def _show_message() -> None:
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is None:
        return
    kind, text = message
    {"error": st.error, "success": st.success, "info": st.info}[kind](escape_markdown(text))


def _load_next(actor: str) -> None:
    """Claim the next item (the view the service allows) into this session, or say none is left."""
    st.session_state[COMMENT_KEY] = ""
    try:
        view = uc.next_item(actor=actor)
    except Her2opsError as exc:
        st.session_state.pop(ITEM_KEY, None)
        _say("error", f"No core claimed: {exc}")
        return
    if view is None:
        st.session_state.pop(ITEM_KEY, None)
        _say("info", "The review queue has no more cores for you now.")
    else:
        st.session_state[ITEM_KEY] = view


def _next(actor: str) -> None:
    _load_next(actor)


def _token(item: dict[str, Any]) -> int | None:
    claim = item.get("claim")
    return None if claim is None else int(claim["token"])


def _renew(actor: str, item: dict[str, Any]) -> dict[str, Any] | None:
    """Extend the lease of the held item; if the claim is gone, drop it and say so."""
    try:
        lease = uc.renew(actor=actor, item=item["item"], token=_token(item))
    except Her2opsError as exc:
        st.session_state.pop(ITEM_KEY, None)
        _say("error", f"Lease lost: {exc}")
        return None
    item["claim"] = {"token": lease["token"], "lease_expires_at": lease["lease_expires_at"]}
    st.session_state[ITEM_KEY] = item
    return item


def _act(actor: str, action: str, score: str | None = None) -> None:
    item = st.session_state.get(ITEM_KEY)
    if item is None:
        _say("error", "No core is claimed in this page: press Next core.")
        return
    token = _token(item)
    try:
        if action == "submit":
            comment = (st.session_state.get(COMMENT_KEY) or "").strip() or None
            done = uc.submit(
                actor=actor, item=item["item"], score=str(score), comment=comment, token=token
            )
            text = f"Vote {done['score']} recorded on core {done['core']}."
        elif action == "skip":
            uc.skip(actor=actor, item=item["item"], token=token)
            text = f"Core {item['core']} skipped: it will not be offered to you again."
        else:
            uc.release(actor=actor, item=item["item"], token=token)
            text = f"Core {item['core']} released to the queue."
    except Her2opsError as exc:
        st.session_state.pop(ITEM_KEY, None)
        _say("error", f"Not recorded: {exc}")
        return
    if action == "release":
        st.session_state.pop(ITEM_KEY, None)
        st.session_state[COMMENT_KEY] = ""
        _say("success", text)
        return
    _load_next(actor)
    kind, after = st.session_state.pop(MESSAGE_KEY, ("success", ""))
    _say("error" if kind == "error" else "success", f"{text} {after}".strip())


# --- rendering ---------------------------------------------------------------------------------


def _core_image(actor: str, item: int, **region: Any) -> dict[str, Any] | None:
    """The whole core, or a zoomed region, through the review use case (who may see it)."""
    try:
        return uc.core_pixels(actor=actor, item=item, **region)
    except Her2opsError as exc:
        st.info(str(exc))
        return None


def _show_item(actor: str, item: dict[str, Any]) -> None:
    lease = item.get("claim", {}).get("lease_expires_at")
    st.text(
        f"core {item['core']} · item {item['item']} · round {item['round']} · {item['mode']}"
        + f" · votes {item['votes_done']}/{item['votes_needed']}"
        + (" · other votes and the model's output are hidden from you" if item["blinded"] else "")
    )
    if lease is not None:
        st.text(f"your claim expires at {lease:%H:%M:%S %Z} (renewed on each action)")
    left, right = st.columns([3, 2])
    with left:
        whole = _core_image(actor, item["item"])
        if whole is not None:
            st.image(np.asarray(whole["image"]), caption="whole core (top pyramid level)")
            with st.expander("zoom: high-resolution regions from the pyramid"):
                level = st.select_slider(
                    "pyramid level (0 = full resolution)",
                    options=list(range(whole["levels"])),
                    value=0,
                    key="review_zoom_level",
                )
                x = st.slider("x (left to right)", 0.0, 1.0, 0.5, key="review_zoom_x")
                y = st.slider("y (top to bottom)", 0.0, 1.0, 0.5, key="review_zoom_y")
                zoom = _core_image(actor, item["item"], level=level, x=x, y=y, size=512)
                if zoom is not None:
                    st.image(np.asarray(zoom["image"]), caption=f"level {level}, 512 px region")
    if item["blinded"]:
        return
    with right:
        _unblinded(item)


def _unblinded(item: dict[str, Any]) -> None:
    """What a non-blinded view adds: the votes, the consensus and the model's KCS sets."""
    consensus = item.get("consensus")
    st.text(
        "consensus: "
        + ("none" if consensus is None else f"{consensus['status']} {consensus['score'] or ''}")
    )
    st.caption("votes")
    votes = item.get("votes") or []
    if votes:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "pathologist": v["pathologist"],
                        "round": v["round"],
                        "score": v["score"],
                        "comment": v["comment"] or "",
                    }
                    for v in votes
                ]
            ),
            hide_index=True,
        )
    else:
        st.text("none")
    model = item.get("model")
    if model:
        st.caption("model")
        st.text(f"{model['model']}: final score {model['final_score']}")
        st.dataframe(
            pd.DataFrame(
                [
                    {"set": s["index"], "class": s["class"], "confidence": s["confidence"]}
                    for s in model["kcs_sets"]
                ]
            ),
            hide_index=True,
        )
    reasons = item.get("reasons") or []
    if reasons:
        st.caption("flagged because")
        for r in reasons:
            st.text(f"{r.get('flag', '')}: {r.get('reason', '')}")


def _actions(actor: str) -> None:
    st.text_area("comment (optional)", key=COMMENT_KEY, max_chars=2000)
    cols = st.columns(len(SCORES))
    for col, score in zip(cols, SCORES, strict=True):
        col.button(
            score,
            key=f"review_score_{score}",
            on_click=_act,
            args=(actor, "submit", score),
            width="stretch",
            shortcut=SHORTCUTS[score],
        )
    skip, release = st.columns(2)
    skip.button("Skip", key="review_skip", on_click=_act, args=(actor, "skip"))
    release.button("Release", key="review_release", on_click=_act, args=(actor, "release"))
