"""Error types: every error names the file or key at fault and what to do about it."""

from __future__ import annotations


class A2VError(Exception):
    """Base class. `exit_code` is what the CLI exits with; the message is one line for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(A2VError):
    """Bad input from the user: a missing file, an unknown class, a bad value. Exit code 2."""

    exit_code = 2


class ConfigError(InputError):
    """An invalid configuration; `problems` lists every (key path, message) at once."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        joined = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in problems)
        n = len(problems)
        super().__init__(f"invalid config {source}: {n} problem{'s' if n != 1 else ''}: {joined}")


class ModelLoadError(InputError):
    """A model could not be loaded from a hub id or folder."""


class ArtifactError(A2VError):
    """An artifact on disk is missing, incomplete, of the wrong kind or corrupt. Exit code 2."""

    exit_code = 2


class CacheLockedError(A2VError):
    """Another process holds the write lock of a cache."""

    exit_code = 1


class VerifyError(A2VError):
    """`--verify` found corruption. Exit code 4."""

    exit_code = 4


class LeakDetected(A2VError):
    """memcheck found memory growth. Exit code 3."""

    exit_code = 3
