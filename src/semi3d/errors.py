"""One exception type for bad user input: the CLI prints its message alone, without a traceback;
and the one wording of an unknown option (:func:`check_options`)."""
from __future__ import annotations

from collections.abc import Iterable


class InputError(ValueError):
    """Bad user input (a file, a config key, a split). The message names the file/key and the problem."""

    def __init__(self, where: object, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


def check_options(where: object, given: Iterable[str], valid: Iterable[str]) -> None:
    """InputError naming every key of ``given`` that is not in ``valid`` (and the valid ones)."""
    valid = list(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise InputError(where, f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                f"valid: {', '.join(sorted(valid))}")
