"""Who may see a file, a batch or an async job: the virtual key that created it.

A row's ``owner`` is the id of the virtual key that created it, ``None`` when it
was created with the master key or on an open gateway (no master key, keys not
required). A virtual key sees only its own rows; the master key sees every row;
a caller without a key (open gateway) sees only rows without an owner — so a
gateway without virtual keys works as before, and one where some clients use
keys does not show their files to clients without one. A row the caller may not
see is answered 404, exactly like a row that does not exist: its id reveals
nothing.

Output and error files of a batch belong to the batch's owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tokenomy.pipeline.call import Identity


class _AnyOwner:
    """Listing filter: rows of every owner (what the master key sees)."""

    def __repr__(self) -> str:
        return "ANY_OWNER"


ANY_OWNER: Final = _AnyOwner()

#: the owner rows are listed for: a key id, ``None`` (rows without an owner) or ``ANY_OWNER``
OwnerFilter = str | None | _AnyOwner


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of the Files, Batch and async-job APIs."""

    #: what the caller's virtual key binds (``None``: master key or no key)
    identity: Identity | None = None
    master: bool = False

    @property
    def key_id(self) -> str | None:
        """The owner of what this caller creates."""
        return self.identity.key_id if self.identity is not None else None

    def may_see(self, owner: str | None) -> bool:
        return self.master or owner == self.key_id

    @property
    def scope(self) -> OwnerFilter:
        """Whose rows this caller's listings show."""
        return ANY_OWNER if self.master else self.key_id
