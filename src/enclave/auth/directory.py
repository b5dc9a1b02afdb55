"""The people and groups the identity provider provisions over SCIM 2.0, in the database.

:class:`Directory` is scim2-server's storage (``ScimStorage``) over the ``users``,
``scim_groups`` and ``scim_group_members`` tables. scim2-server and scim2-models
parse the requests, filters and PATCH operations and write the responses
(``auth/provisioning.py``); this class reads and writes rows, and carries out
what a change means for access:

- A SCIM User is a row of ``users`` with ``provisioned`` set; its id is the row's.
  ``externalId`` is the provider's id of the person, the value of the ID token
  claim ``identity.scim.match_claim``. With ``sub`` (the default) the user is
  keyed by (issuer, externalId) at once, exactly as sign-in looks users up, and a
  user who signed in before is taken over. With another claim (Entra's ``oid``)
  the user waits unbound until that claim signs in (``auth/users.py``). Nothing
  is ever matched by e-mail or userName, which people can change.
- ``active: false`` disables the user and ends their sessions: the next request of
  a session or of one of their keys is refused (``auth/keys.py`` reads the owner
  on every request). DELETE also revokes their keys and drops their memberships;
  the row stays (keys, conversations and the audit log point at it), disabled and
  no longer provisioned, so the person cannot sign in again unless the provider
  provisions them again or an admin enables them.
- A Group's ``displayName`` is the group's name everywhere else: ``group:NAME`` in
  ``identity.admins`` and ``identity.workspaces``, and documents' groups. A
  provisioned user's ``groups_json`` is always the names of their SCIM groups,
  rewritten in the transaction that changes a membership or a group's name, so a
  removal counts at the member's next request. A User's ``groups`` is read-only
  (RFC 7643 §4.1.2): memberships change through the Group.

Writes are serialised in this process (a lock around each SCIM operation) and
checked against the row's ``version``, which is also the ETag, under a row lock:
a write from another replica in between makes the later one fail with 412,
which ``Provisioning.serve`` turns into a fresh read and another try unless the
provider named the version itself (``If-Match``).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from scim2_models import (
    EnterpriseUser,
    Group,
    GroupMember,
    GroupMembership,
    InvalidValueException,
    Meta,
    NotFoundException,
    NotImplementedException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimFilter,
    SearchRequest,
    UniquenessException,
    User,
)
from scim2_models.path import CompareOperator, Comparison
from scim2_server.storage import ScimStorage, SearchPage
from scim2_server.utils import parametrize
from sqlalchemy import ColumnElement, Select, delete, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from enclave.auth.keys import KeyService
from enclave.auth.sessions import SessionService
from enclave.auth.users import SUPERSEDED_ISSUER, UNBOUND_ISSUER
from enclave.storage.models import ScimGroupMemberRow, ScimGroupRow, UserRow

_Row = TypeVar("_Row", UserRow, ScimGroupRow)

log = logging.getLogger(__name__)

UserResource = User[EnterpriseUser]
USER, GROUP = "User", "Group"
# What the row's own columns hold: never copied into ``scim_json``. The password is
# write-only in SCIM and Enclave has no use for it: it is dropped, never stored.
_OWN_FIELDS = {"id", "meta", "groups", "password", "user_name", "external_id", "active"}
_LONGEST = 255


def etag(version: int) -> str:
    return f'W/"{version}"'


@dataclass(frozen=True)
class _UserFields:
    user_name: str
    external_id: str | None
    name: str
    email: str | None
    active: bool
    scim_json: str


class Directory(ScimStorage):
    """SCIM Users and Groups on the ``users`` and ``scim_groups`` tables."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        issuer: str,
        match_claim: str,
        keys: KeyService,
        ui_sessions: SessionService,
    ) -> None:
        self._db = sessions
        self.issuer = issuer
        self.match_claim = match_claim
        self._keys = keys
        self._ui_sessions = ui_sessions
        self._lock = threading.RLock()

    @contextmanager
    def operation(self) -> Iterator[None]:
        # A PATCH reads, applies and writes: one at a time in this process, so two
        # member changes to the same group from the provider never lose each other.
        with self._lock:
            yield

    # -- reading -----------------------------------------------------------------

    def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        with self._db() as session:
            if resource_type.name == GROUP:
                return self._groups(session, [self._group_row(session, resource_id)])[0]
            return self._users(session, [self._user_row(session, resource_id)])[0]

    def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        if len(resource_types) != 1:
            raise NotImplementedException(detail="Search /Users or /Groups, one at a time.")
        is_group = resource_types[0].name == GROUP
        scim_filter = search_request.filter
        with self._db() as session:
            if is_group:
                groups = session.scalars(self._group_candidates(scim_filter)).all()
                found = self._groups(session, list(groups))
            else:
                users = session.scalars(self._user_candidates(scim_filter)).all()
                found = self._users(session, list(users))
        if scim_filter is not None:
            # The SQL above only narrows an equality down; scim2-models decides.
            if not scim_filter.models:
                model = Group if is_group else UserResource
                scim_filter = parametrize(ScimFilter, model)(str(scim_filter))
            found = [resource for resource in found if scim_filter.match(resource)]
        start = search_request.start_index_0 or 0
        stop = None if search_request.count is None else start + search_request.count
        return SearchPage(len(found), found[start:stop])

    # -- writing -----------------------------------------------------------------

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        if resource_type.name == GROUP:
            return self._create_group(cast(Group, resource))
        return self._create_user(cast(UserResource, resource))

    def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        if resource_type.name == GROUP:
            return self._update_group(cast(Group, resource), expected_version)
        return self._update_user(cast(UserResource, resource), expected_version)

    def delete(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        expected_version: str | None = None,
    ) -> None:
        if resource_type.name == GROUP:
            self._delete_group(resource_id, expected_version)
        else:
            self._delete_user(resource_id, expected_version)

    # -- users -------------------------------------------------------------------

    def _create_user(self, resource: UserResource) -> Resource[Any]:
        fields = _user_fields(resource)
        now = datetime.now(UTC)
        with self._db.begin() as session:
            self._check_user_name(session, fields.user_name, None)
            self._check_external_id(session, fields.external_id, None)
            issuer, subject = self._key_for(fields.external_id)
            row = session.scalar(
                select(UserRow).where(UserRow.issuer == issuer, UserRow.subject == subject)
            )
            taken_over = row is not None
            if row is None:
                row = UserRow(issuer=issuer, subject=subject, created_at=now, version=0)
                session.add(row)
            elif row.provisioned:  # _check_external_id saw it unless the ids differ in case
                raise UniquenessException(detail="Another user has this externalId.")
            _apply(row, fields, now)
            row.groups_json = "[]"  # SCIM's groups from now on: none until a Group names them
            row.groups_updated_at = now
            session.flush()
            created = self._users(session, [row])[0]
            user_id = row.id
        ended = 0 if fields.active else self._ui_sessions.end_user_sessions(user_id)
        log.info(
            "scim: user %d provisioned (%s, %s)%s",
            user_id,
            "active" if fields.active else "inactive",
            "taking over the user who signed in before" if taken_over else "new",
            f"; {ended} sessions ended" if ended else "",
        )
        return created

    def _update_user(self, resource: UserResource, expected: str | None) -> Resource[Any]:
        fields = _user_fields(resource)
        now = datetime.now(UTC)
        with self._db.begin() as session:
            row = self._user_row(session, resource.id, lock=True)
            _check_version(row.version, expected)
            self._check_user_name(session, fields.user_name, row.id)
            rekeyed = False
            if fields.external_id != row.external_id:
                self._check_external_id(session, fields.external_id, row.id)
                issuer, subject = self._key_for(fields.external_id)
                clash = session.scalar(
                    select(UserRow.id).where(
                        UserRow.issuer == issuer, UserRow.subject == subject, UserRow.id != row.id
                    )
                )
                if clash is not None:
                    raise UniquenessException(detail="Another user has this externalId.")
                row.issuer, row.subject, rekeyed = issuer, subject, True
            deactivated = not row.disabled and not fields.active
            _apply(row, fields, now)
            session.flush()
            updated = self._users(session, [row])[0]
            user_id = row.id
        ended = self._ui_sessions.end_user_sessions(user_id) if deactivated or rekeyed else 0
        changes = [
            "deactivated" if deactivated else "",
            "externalId changed (matched again at the next sign-in)" if rekeyed else "",
            f"{ended} sessions ended" if ended else "",
        ]
        log.info("scim: user %d updated%s", user_id, "".join(f"; {c}" for c in changes if c))
        return updated

    def _delete_user(self, resource_id: str, expected: str | None) -> None:
        now = datetime.now(UTC)
        with self._db.begin() as session:
            row = self._user_row(session, resource_id, lock=True)
            _check_version(row.version, expected)
            group_ids = session.scalars(
                select(ScimGroupMemberRow.group_id).where(ScimGroupMemberRow.user_id == row.id)
            ).all()
            session.execute(delete(ScimGroupMemberRow).where(ScimGroupMemberRow.user_id == row.id))
            _bump_groups(session, group_ids, now)
            if row.issuer == UNBOUND_ISSUER:  # never to be matched at a sign-in again
                row.issuer = f"{SUPERSEDED_ISSUER}{row.id}"
            row.provisioned = False
            row.disabled = True
            row.user_name = row.external_id = row.scim_json = None
            row.groups_json = "[]"
            row.groups_updated_at = row.updated_at = now
            row.version += 1
            user_id = row.id
        ended = self._ui_sessions.end_user_sessions(user_id)
        revoked = self._keys.revoke_user_keys(user_id)
        log.info(
            "scim: user %d deleted: disabled, %d sessions ended, %d keys revoked, "
            "removed from %d groups",
            user_id,
            ended,
            revoked,
            len(group_ids),
        )

    def _key_for(self, external_id: str | None) -> tuple[str, str]:
        """The (issuer, subject) a provisioned user is kept under (``auth/users.py``)."""
        if external_id is None:  # cannot sign in until the provider sends an externalId
            return UNBOUND_ISSUER, f"no-external-id:{uuid.uuid4().hex}"
        if self.match_claim == "sub":
            return self.issuer, external_id
        return UNBOUND_ISSUER, external_id

    def _check_user_name(self, session: Session, user_name: str, own_id: int | None) -> None:
        # userName is unique and not case-exact (RFC 7643 §4.1.1).
        taken = _same_text(session, UserRow.user_name, user_name, UserRow.id)
        if any(found != own_id for found in taken):
            raise UniquenessException(detail="Another user has this userName.")

    def _check_external_id(
        self, session: Session, external_id: str | None, own: int | None
    ) -> None:
        if external_id is None:
            return
        taken = session.scalar(
            select(UserRow.id).where(
                UserRow.provisioned, UserRow.external_id == external_id, UserRow.id != (own or 0)
            )
        )
        if taken is not None:
            raise UniquenessException(detail="Another user has this externalId.")

    def _user_row(
        self, session: Session, resource_id: str | None, *, lock: bool = False
    ) -> UserRow:
        query = select(UserRow).where(UserRow.id == _row_id(resource_id), UserRow.provisioned)
        row = session.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFoundException(detail=f"No user with id {resource_id!r}.")
        return row

    def _user_candidates(self, scim_filter: ScimFilter[Any] | None) -> Select[UserRow]:
        query = select(UserRow).where(UserRow.provisioned).order_by(UserRow.id)
        return _narrowed(query, scim_filter, UserRow, "username", UserRow.user_name)

    def _users(self, session: Session, rows: list[UserRow]) -> list[Resource[Any]]:
        """The rows as SCIM Users, with their groups (one query for all of them)."""
        held: dict[int, list[GroupMembership]] = defaultdict(list)
        ids = [row.id for row in rows]
        query = (
            select(ScimGroupMemberRow.user_id, ScimGroupRow.id, ScimGroupRow.display_name)
            .join(ScimGroupRow, ScimGroupRow.id == ScimGroupMemberRow.group_id)
            .order_by(ScimGroupRow.display_name)
        )
        if len(ids) <= 500:
            query = query.where(ScimGroupMemberRow.user_id.in_(ids))
        for user_id, group_id, name in session.execute(query):
            held[user_id].append(
                GroupMembership(
                    value=str(group_id), display=name, ref=f"Groups/{group_id}", type="direct"
                )
            )
        return [_user_resource(row, held.get(row.id, [])) for row in rows]

    # -- groups ------------------------------------------------------------------

    def _create_group(self, resource: Group) -> Resource[Any]:
        name, external_id = _group_fields(resource)
        now = datetime.now(UTC)
        with self._db.begin() as session:
            self._check_group_name(session, name, None)
            members = self._member_ids(session, resource)
            row = ScimGroupRow(
                display_name=name, external_id=external_id, version=1, created_at=now
            )
            row.updated_at = now
            session.add(row)
            session.flush()
            session.add_all(ScimGroupMemberRow(group_id=row.id, user_id=uid) for uid in members)
            session.flush()
            _refresh_groups(session, members, now)
            created = self._groups(session, [row])[0]
            group_id = row.id
        log.info("scim: group %d %r created with %d members", group_id, name, len(members))
        return created

    def _update_group(self, resource: Group, expected: str | None) -> Resource[Any]:
        name, external_id = _group_fields(resource)
        now = datetime.now(UTC)
        with self._db.begin() as session:
            row = self._group_row(session, resource.id, lock=True)
            _check_version(row.version, expected)
            self._check_group_name(session, name, row.id)
            members = self._member_ids(session, resource)
            before = set(
                session.scalars(
                    select(ScimGroupMemberRow.user_id).where(ScimGroupMemberRow.group_id == row.id)
                ).all()
            )
            added, removed = members - before, before - members
            if removed:
                session.execute(
                    delete(ScimGroupMemberRow).where(
                        ScimGroupMemberRow.group_id == row.id,
                        ScimGroupMemberRow.user_id.in_(removed),
                    )
                )
            session.add_all(ScimGroupMemberRow(group_id=row.id, user_id=uid) for uid in added)
            renamed = name != row.display_name
            old_name = row.display_name
            row.display_name, row.external_id = name, external_id
            row.version += 1
            row.updated_at = now
            session.flush()
            _refresh_groups(session, members | before if renamed else added | removed, now)
            updated = self._groups(session, [row])[0]
            group_id = row.id
        log.info(
            "scim: group %d %r updated%s: users added %s, removed %s",
            group_id,
            name,
            f" (renamed from {old_name!r})" if renamed else "",
            _ids(added),
            _ids(removed),
        )
        return updated

    def _delete_group(self, resource_id: str, expected: str | None) -> None:
        now = datetime.now(UTC)
        with self._db.begin() as session:
            row = self._group_row(session, resource_id, lock=True)
            _check_version(row.version, expected)
            members = set(
                session.scalars(
                    select(ScimGroupMemberRow.user_id).where(ScimGroupMemberRow.group_id == row.id)
                ).all()
            )
            session.execute(delete(ScimGroupMemberRow).where(ScimGroupMemberRow.group_id == row.id))
            session.delete(row)
            session.flush()
            _refresh_groups(session, members, now)
            group_id, name = row.id, row.display_name
        log.info("scim: group %d %r deleted; %d members lose it", group_id, name, len(members))

    def _check_group_name(self, session: Session, name: str, own_id: int | None) -> None:
        taken = _same_text(session, ScimGroupRow.display_name, name, ScimGroupRow.id)
        if any(found != own_id for found in taken):
            raise UniquenessException(detail="Another group has this displayName.")

    def _member_ids(self, session: Session, resource: Group) -> set[int]:
        """The users a Group names, each a provisioned user (400 otherwise)."""
        wanted: set[int] = set()
        for member in resource.members or []:
            if member.type is not None and member.type.lower() == "group":
                raise InvalidValueException(detail="Groups in groups are not supported.")
            user_id = _row_id(member.value, missing=-1)
            if user_id < 0:
                raise InvalidValueException(detail=f"No user with id {member.value!r}.")
            wanted.add(user_id)
        if not wanted:
            return wanted
        found = set(
            session.scalars(
                select(UserRow.id).where(UserRow.id.in_(wanted), UserRow.provisioned)
            ).all()
        )
        if missing := sorted(wanted - found):
            raise InvalidValueException(detail=f"No user with id {str(missing[0])!r}.")
        return wanted

    def _group_row(
        self, session: Session, resource_id: str | None, *, lock: bool = False
    ) -> ScimGroupRow:
        query = select(ScimGroupRow).where(ScimGroupRow.id == _row_id(resource_id))
        row = session.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFoundException(detail=f"No group with id {resource_id!r}.")
        return row

    def _group_candidates(self, scim_filter: ScimFilter[Any] | None) -> Select[ScimGroupRow]:
        query = select(ScimGroupRow).order_by(ScimGroupRow.id)
        return _narrowed(query, scim_filter, ScimGroupRow, "displayname", ScimGroupRow.display_name)

    def _groups(self, session: Session, rows: list[ScimGroupRow]) -> list[Resource[Any]]:
        members: dict[int, list[GroupMember]] = defaultdict(list)
        ids = [row.id for row in rows]
        query = (
            select(ScimGroupMemberRow.group_id, UserRow.id, UserRow.name)
            .join(UserRow, UserRow.id == ScimGroupMemberRow.user_id)
            .order_by(UserRow.id)
        )
        if len(ids) <= 500:
            query = query.where(ScimGroupMemberRow.group_id.in_(ids))
        for group_id, user_id, name in session.execute(query):
            members[group_id].append(
                GroupMember(value=str(user_id), display=name, type="User", ref=f"Users/{user_id}")
            )
        return [
            Group(
                id=str(row.id),
                external_id=row.external_id,
                display_name=row.display_name,
                members=members.get(row.id) or None,
                meta=_meta(GROUP, row.created_at, row.updated_at, row.version),
            )
            for row in rows
        ]


# -- rows and resources -------------------------------------------------------------


def _user_fields(resource: UserResource) -> _UserFields:
    """What Enclave keeps of a SCIM User, checked."""
    user_name = (resource.user_name or "").strip()
    if not user_name:
        raise InvalidValueException(detail="userName is required.")
    external_id = resource.external_id or None
    for label, value in (("userName", user_name), ("externalId", external_id)):
        if value is not None and len(value) > _LONGEST:
            raise InvalidValueException(detail=f"{label} is longer than {_LONGEST} characters.")
    given = resource.name
    name = (
        resource.display_name
        or (given.formatted if given else None)
        or (" ".join(p for p in (given.given_name, given.family_name) if p) if given else None)
        or user_name
    )
    emails = resource.emails or []
    chosen = next((e for e in emails if e.primary), emails[0] if emails else None)
    email = str(chosen.value) if chosen is not None and chosen.value else None
    return _UserFields(
        user_name=user_name,
        external_id=external_id,
        name=name[:_LONGEST],
        email=email[:320] if email else None,
        active=resource.active is not False,
        scim_json=json.dumps(resource.model_dump(exclude=_OWN_FIELDS)),
    )


def _apply(row: UserRow, fields: _UserFields, now: datetime) -> None:
    row.provisioned = True
    row.user_name = fields.user_name
    row.external_id = fields.external_id
    row.name = fields.name
    row.email = fields.email
    row.disabled = not fields.active
    row.scim_json = fields.scim_json
    row.version = (row.version or 0) + 1
    row.updated_at = now


def _user_resource(row: UserRow, groups: list[GroupMembership]) -> Resource[Any]:
    resource = UserResource.model_validate(json.loads(row.scim_json or "{}"))
    resource.id = str(row.id)
    resource.user_name = row.user_name
    resource.external_id = row.external_id
    resource.active = not row.disabled
    resource.groups = groups or None
    resource.meta = _meta(USER, row.created_at, row.updated_at, row.version)
    return resource


def _group_fields(resource: Group) -> tuple[str, str | None]:
    name = (resource.display_name or "").strip()
    if not name:
        raise InvalidValueException(detail="displayName is required.")
    external_id = resource.external_id or None
    for label, value in (("displayName", name), ("externalId", external_id)):
        if value is not None and len(value) > _LONGEST:
            raise InvalidValueException(detail=f"{label} is longer than {_LONGEST} characters.")
    return name, external_id


def _meta(kind: str, created: datetime, updated: datetime | None, version: int) -> Meta:
    return Meta(
        resource_type=kind, created=created, last_modified=updated or created, version=etag(version)
    )


def _refresh_groups(session: Session, user_ids: Iterable[int], now: datetime) -> None:
    """Rewrite the members' group snapshots (read on their every request) from the rows."""
    users = sorted(set(user_ids))
    if not users:
        return
    names: dict[int, list[str]] = defaultdict(list)
    for user_id, name in session.execute(
        select(ScimGroupMemberRow.user_id, ScimGroupRow.display_name)
        .join(ScimGroupRow, ScimGroupRow.id == ScimGroupMemberRow.group_id)
        .where(ScimGroupMemberRow.user_id.in_(users))
    ):
        names[user_id].append(name)
    for user_id in users:
        session.execute(
            update(UserRow)
            .where(UserRow.id == user_id, UserRow.provisioned)
            .values(
                groups_json=json.dumps(sorted(names[user_id])),
                groups_updated_at=now,
                version=UserRow.version + 1,
                updated_at=now,
            )
        )


def _bump_groups(session: Session, group_ids: Iterable[int], now: datetime) -> None:
    ids = sorted(set(group_ids))
    if ids:
        session.execute(
            update(ScimGroupRow)
            .where(ScimGroupRow.id.in_(ids))
            .values(version=ScimGroupRow.version + 1, updated_at=now)
        )


def _check_version(version: int, expected: str | None) -> None:
    if expected is not None and etag(version) != expected:
        raise PreconditionFailedException(detail="The resource changed in the meantime.")


def _row_id(value: str | None, *, missing: int = -1) -> int:
    """A SCIM id as a row id; ``missing`` (no row has it) when it is not one."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return missing
    return int(value)


def _same_text(
    session: Session, column: Any, value: str, key: ColumnElement[int] | Any
) -> list[int]:
    """The ids of the rows whose ``column`` equals ``value`` ignoring case."""
    if value.isascii():
        return list(session.scalars(select(key).where(func.lower(column) == value.lower())))
    folded = value.casefold()
    return [
        found
        for found, text in session.execute(select(key, column).where(column.is_not(None)))
        if text.casefold() == folded
    ]


def _narrowed(
    query: Select[_Row],
    scim_filter: ScimFilter[Any] | None,
    table: type[UserRow] | type[ScimGroupRow],
    name_attribute: str,
    name_column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None],
) -> Select[_Row]:
    """``query`` narrowed in SQL by an equality filter on the id, ``externalId`` (case
    exact) or the name (case-insensitive); any other filter leaves it as it is."""
    equal = _equality(scim_filter)
    if equal is None:
        return query
    attribute, value = equal
    if attribute == "id":
        return query.where(table.id == _row_id(value, missing=0))
    if attribute == "externalid":
        return query.where(table.external_id == value)
    if attribute == name_attribute and value.isascii():  # SQLite's lower() is ASCII only
        return query.where(func.lower(name_column) == value.lower())
    return query


def _equality(scim_filter: ScimFilter[Any] | None) -> tuple[str, str] | None:
    """``(attribute, value)`` when the filter is one ``attribute eq "value"``."""
    if scim_filter is None:
        return None
    node = scim_filter.ast
    if not isinstance(node, Comparison) or node.op != CompareOperator.eq:
        return None
    if not isinstance(node.value, str):
        return None
    attribute = str(node.attr_path).rsplit(":", 1)[-1].lower()
    return attribute, node.value


def _ids(ids: set[int]) -> str:
    shown = sorted(ids)
    return str(shown[:20]) + (f" and {len(shown) - 20} more" if len(shown) > 20 else "")
