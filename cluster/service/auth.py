"""Who is asking: bearer tokens from a token file, and the folders a job may read and write.

The token file is JSON, ``{"tokens": {"<token>": "<user>", ...}, "admins": ["<user>"]}``: a user
sees and stops their own jobs, an admin every job. Paths a request names (fact and output
folders, and every file a program's ``.input``/``.output`` names) must resolve, symbolic links
followed, inside one of the service's roots."""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from dask_datalog.engine.errors import DatalogError


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.name


class Tokens:
    def __init__(self, tokens: dict[str, str], admins: set[str]):
        self.tokens, self.admins = tokens, admins

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """The token file at ``path``; a DatalogError naming it when it is not one."""
        try:
            data = json.loads(path.read_text())
            tokens = data["tokens"]
            admins = set(data.get("admins", []))
            ok = isinstance(tokens, dict) and all(isinstance(k, str) and isinstance(v, str) and k for k, v in tokens.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DatalogError(None, f"token file {path}: {error}") from None
        if not ok or not tokens:
            raise DatalogError(None, f'token file {path}: expected {{"tokens": {{"<token>": "<user>", ...}}, "admins": [...]}}')
        return cls(tokens, admins)

    @classmethod
    def create(cls, path: Path, user: str) -> Tokens:
        """A new token file at ``path`` with one admin token for ``user``, readable by its owner
        only (a service started without ``--token-file``)."""
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": {token: user}, "admins": [user]}, f)
        return cls({token: user}, {user})

    def user(self, token: str) -> User | None:
        """The token's user, or None; compared in constant time."""
        for known, name in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return User(name, name in self.admins)
        return None


class Roots:
    """The folders jobs may read facts from and write outputs to."""

    def __init__(self, roots: list[Path]):
        self.roots = [Path(os.path.realpath(r)) for r in roots]

    def confine(self, path: str | Path, what: str) -> str:
        """``path`` resolved; a PathRefused when it is outside every root."""
        resolved = Path(os.path.realpath(path))
        if not any(resolved.is_relative_to(root) for root in self.roots):
            where = ", ".join(map(str, self.roots)) or "none configured (give serve --root DIR)"
            raise PathRefused(f"{what} {path} is outside the service's roots ({where})")
        return str(resolved)


class PathRefused(DatalogError):
    """A path outside the roots: refused with HTTP 403 at submission, or the job's error."""

    def __init__(self, message: str):
        super().__init__(None, message)

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))
