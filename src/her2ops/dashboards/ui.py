"""Rendering helpers shared by the pages: text that is never interpreted, errors, caching."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from her2ops.errors import Her2opsError

T = TypeVar("T")
#: Seconds a page's read model is reused within one user's key (see :func:`cached_read`).
CACHE_TTL = 30

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=])")


def escape_markdown(text: object) -> str:
    """``text`` with every character markdown or HTML could act on escaped, so that core codes,
    comments and user names show as typed (CommonMark turns ``\\x`` back into ``x``)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def show_error(exc: Her2opsError) -> None:
    st.error(escape_markdown(exc))


def attempt(fn: Callable[..., T], /, **kwargs: Any) -> T | None:
    """Run a use case; a user error is shown on the page (as text) and gives None."""
    try:
        return fn(**kwargs)
    except Her2opsError as exc:
        show_error(exc)
        return None


@st.cache_data(ttl=CACHE_TTL, show_spinner=False, max_entries=64)
def _cached(name: str, actor: str, kwargs: tuple[tuple[str, Any], ...]) -> Any:
    from importlib import import_module

    module, func = name.rsplit(".", 1)
    return getattr(import_module(module), func)(actor=actor, **dict(kwargs))


def cached_read(fn: Callable[..., T], /, *, actor: str, **kwargs: Any) -> T:
    """A read use case's result, reused for ``CACHE_TTL`` s. The acting user is part of the key,
    so one user's result (and the role check that came with it) is never served to another."""
    name = f"{fn.__module__}.{fn.__qualname__}"
    return _cached(name, actor, tuple(sorted(kwargs.items())))


def clear_cache() -> None:
    _cached.clear()


def load(fn: Callable[..., T], /, *, actor: str, **kwargs: Any) -> T:
    """:func:`cached_read`, or the user error shown on the page and the page stopped."""
    try:
        return cached_read(fn, actor=actor, **kwargs)
    except Her2opsError as exc:
        show_error(exc)
        st.stop()
