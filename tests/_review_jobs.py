"""Jobs for tests/test_worker_review_unencodable_errors.py: failures whose encoding itself fails."""

from __future__ import annotations

import os


class UnprintableError(Exception):
    """An exception whose str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


class StubbornText(str):
    """A str whose str() raises: msgpack's default hook calls it for a str subclass."""

    def __str__(self) -> str:
        raise RuntimeError("this text refuses to be a str")


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("this object cannot be shown")


def pid() -> int:
    return os.getpid()


def raise_unprintable() -> None:
    raise UnprintableError("x")


def raise_with_stubborn_argument() -> None:
    raise ValueError(StubbornText("hello"))


def exit_with_unrepresentable_code() -> None:
    raise SystemExit(Unrepresentable())
