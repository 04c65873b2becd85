"""The containers of backups: the backup node that streams every shard's WAL into the
repository (``pg_receivewal``) and takes base backups in it, and the one-shot container that
restores a shard from the repository. Like :mod:`shardctl.docker.specs`, each is one frozen
:class:`~shardctl.docker.records.ContainerSpec`; see docs/backup.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from shardctl.config.constants import BACKUP_SLOT, SEGMENT_BYTES
from shardctl.config.topology import Node, Topology
from shardctl.docker.records import LABEL_CLUSTER, LABEL_SHARD, ContainerSpec, Mount
from shardctl.docker.specs import PASSFILE, SECRETS_DIR, server_settings

REPOSITORY_TARGET = "/repository"
"""Where the backup repository (a host directory) is mounted in the backup node and in a
restore: the backup node read-write, a restore read-only."""
SEED_TARGET = "/seed"
"""A restore's one writable path into the repository: its shard's WAL folder, where the new
timeline's first segment is left for the backup node to continue from."""
BACKUP_APPLICATION = "shardctl-backup"
"""The backup node's ``application_name`` in ``pg_stat_replication``."""
RECEIVE_RETRY_SECONDS = 2

FORK_GENERATION = r"""
# After an async failover the archive may hold WAL the failover lost: the backup node streams
# the WAL of the primary as it is written, the replica may lag. The new primary forked before the
# archive ends and refuses to go on past its fork ("forked from timeline T at X/Y" in the
# error). The archive then goes on in a new generation, from the segment of the fork on the
# timeline that followed T (that segment opens with T up to the fork, as the first segment of
# every timeline does); pg_receivewal follows any later timeline itself. The old generation
# keeps the lost WAL, which points before the failover read. Arguments: shard, host, port and
# the generation that was refused.
fork_generation() {
    fork=$(sed -n -e "s/.*forked from timeline \([0-9]*\) at /\1 /" \
        -e "s/^\([0-9]* [0-9A-F]*\)\/\([0-9A-F]*\)\.$/\1 \2/p" "$errors/$1" | head -n 1)
    [ -n "$fork" ] || return 0
    set -- "$@" $fork
    conninfo="host=$2 port=$3 user=$SHARDCTL_REPLICATION_USER dbname=replication"
    conninfo="$conninfo replication=true"
    current=$(psql -w -XAt -d "$conninfo" -c IDENTIFY_SYSTEM 2>/dev/null | cut -d "|" -f 2)
    child=$current
    # The timeline after T: the next line of the history of the current one, else the current one.
    psql -w -XAt -d "$conninfo" -c "TIMELINE_HISTORY $current" 2>/dev/null \
        | sed -e "1s/^[^|]*|//" > "$errors/$1.history"
    after=""
    while read -r line _; do
        [ -n "$line" ] || continue
        if [ -n "$after" ]; then
            child=$line
            break
        fi
        [ "$line" = "$5" ] && after=yes
    done < "$errors/$1.history"
    case "$child" in
    "" | *[!0-9]*)
        echo "shardctl: archiving $1: the primary forked from timeline $5 at $6/$7, and its" \
            "timelines could not be read" >&2
        return 0 ;;
    esac
    segment=$(printf "%08X%08X%08X" "$child" "$((0x$6))" "$((0x$7 / SHARDCTL_SEGMENT_BYTES))")
    next=$(($4 + 1))
    if mkdir -p "$repo/$1/wal/$next" && : > "$repo/$1/wal/$next/$segment.partial"; then
        echo "shardctl: archiving $1: the primary forked from timeline $5 at $6/$7, before" \
            "the archive ends; continuing in WAL generation $next from $segment" >&2
    else
        echo "shardctl: archiving $1: could not start WAL generation $next" >&2
    fi
}
"""
"""A shell function of the backup node's loop (in :data:`BACKUP_BOOTSTRAP`); it reads
``$errors``, ``$repo`` and the environment. Unit-tested on its own with psql's real answers."""

# The backup node: as root only to give the postgres user the cluster's folders in the
# repository (a host directory, owned by whoever made it), then as postgres one loop per shard
# of `pg_receivewal --synchronous` into the newest WAL generation of that shard. Values arrive
# as environment variables, the replication password as a secret file turned into a libpq
# password file; nothing is spliced into this text.
BACKUP_BOOTSTRAP = (
    r"""set -eu
umask 077
repo="$SHARDCTL_REPOSITORY/$SHARDCTL_CLUSTER"
mkdir -p "$repo"
for shard in $SHARDCTL_SHARDS; do
    mkdir -p "$repo/$shard/wal" "$repo/$shard/base"
    chown postgres: "$repo/$shard" "$repo/$shard/wal" "$repo/$shard/base"
done
printf '*:*:*:%s:%s\n' "$SHARDCTL_REPLICATION_USER" \
    "$(sed -e 's/[\\:]/\\&/g' "$SHARDCTL_SECRETS/replication")" > "$SHARDCTL_PASSFILE"
chown postgres: "$SHARDCTL_PASSFILE"
# The cluster's CA (public) where the postgres user's libpq can read it: the secrets folder is
# root's alone.
if [ -n "${PGSSLROOTCERT:-}" ]; then
    install -D -o postgres -g postgres -m 0644 "$SHARDCTL_SECRETS/ca.crt" "$PGSSLROOTCERT"
fi
export PGPASSFILE="$SHARDCTL_PASSFILE" PGAPPNAME="$SHARDCTL_APPLICATION"
# setpriv keeps root's HOME, where libpq looks for a client certificate: under TLS it could not
# even look there ("Permission denied") and gave up.
HOME="$(getent passwd postgres | cut -d: -f6)"
export HOME
exec setpriv --reuid=postgres --regid=postgres --init-groups sh -c '
set -u
trap "trap - TERM INT; kill 0; exit 0" TERM INT
repo="$SHARDCTL_REPOSITORY/$SHARDCTL_CLUSTER"
errors=$(mktemp -d)
newest() {
    ls "$1" | grep -E "^[0-9]+$" | sort -n | tail -n 1
}
"""
    + FORK_GENERATION
    + r"""printf "%s\n" "$SHARDCTL_TARGETS" | {
    while read -r shard host port; do
        [ -n "$shard" ] || continue
        (
            while :; do
                generation=$(newest "$repo/$shard/wal")
                if [ -z "$generation" ]; then
                    generation=1
                    mkdir -p "$repo/$shard/wal/1"
                fi
                folder="$repo/$shard/wal/$generation"
                if ! pg_receivewal -D "$folder" -h "$host" -p "$port" \
                    -U "$SHARDCTL_REPLICATION_USER" -S "$SHARDCTL_SLOT" --synchronous -n -w \
                    2>"$errors/$shard"; then
                    cat "$errors/$shard" >&2
                    echo "shardctl: archiving $shard stopped; retrying" >&2
                fi
                # A segment it could not fill with zeros when it made it (the repository was
                # full) holds no WAL yet, and pg_receivewal refuses to start next to it: made
                # empty, it starts there again (emptied, not removed: it may be the first of
                # a new generation, see fork_generation).
                unfilled=$(sed -n \
                    "s/.*\"\([0-9A-F]\{24\}\.partial\)\" has [0-9]* bytes, should be 0 or.*/\1/p" \
                    "$errors/$shard" | head -n 1)
                if [ -n "$unfilled" ]; then
                    : > "$folder/$unfilled"
                    echo "shardctl: archiving $shard: emptied $unfilled, never filled" >&2
                fi
                fork_generation "$shard" "$host" "$port" "$generation"
                sleep "$SHARDCTL_RETRY"
            done
        ) &
    done
    wait
}
' shardctl-archive
"""
)

# A restore, one shard: the base backup copied into the new primary's data directory, then
# PostgreSQL's own recovery with restore_command reading the repository (mounted read-only),
# promoted at the target; the roles get the new cluster's passwords; the new timeline's first
# segment is left in a new WAL generation for the backup node. Root only for copying and
# ownership; the server runs as postgres.
RESTORE_BOOTSTRAP = r"""set -eu
umask 077
chown -R postgres: "$SHARDCTL_SECRETS"
rm -rf "$PGDATA"
mkdir -p "$PGDATA"
cp -R "$SHARDCTL_BASE/." "$PGDATA/"
rm -f "$PGDATA/backup_manifest" "$PGDATA/postmaster.pid" "$PGDATA/standby.signal"
sed -i -e '/^primary_conninfo/d' -e '/^primary_slot_name/d' "$PGDATA/postgresql.auto.conf"
# Only this one-shot container's socket is listened on while it runs; `up` writes the real one.
echo "local all all trust" > "$PGDATA/pg_hba.conf"
touch "$PGDATA/recovery.signal"
mkdir -p /tmp/shardctl-restore
cat > /tmp/shardctl-restore/wal.sh <<'SCRIPT'
# restore_command: $1 the WAL file wanted (%f), $2 where it goes (%p); every generation of the
# shard's archive, a complete segment before a partial one; never an empty one (a generation's
# first segment before anything was streamed into it), which recovery would refuse outright
# instead of going on without it.
for suffix in "" .partial; do
    for folder in "$SHARDCTL_WAL"/*; do
        if [ -s "$folder/$1$suffix" ]; then
            exec cp "$folder/$1$suffix" "$2"
        fi
    done
done
exit 1
SCRIPT
cat > /tmp/shardctl-restore/passwords.sql <<'SQL'
\set pw `cat "$SHARDCTL_SECRETS/superuser"`
SELECT pg_catalog.format('ALTER ROLE %I PASSWORD %L', :'su', :'pw') \gexec
\set pw `cat "$SHARDCTL_SECRETS/replication"`
SELECT pg_catalog.format('ALTER ROLE %I PASSWORD %L', :'rep', :'pw')
 WHERE EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'rep') \gexec
\set pw `cat "$SHARDCTL_SECRETS/app"`
SELECT pg_catalog.format('ALTER ROLE %I PASSWORD %L', :'app', :'pw')
 WHERE EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'app') \gexec
\unset pw
SQL
# The restored catalog must name the nodes the shards were restored into: when its newest
# record says otherwise (a role change after the records a --time restore chose them from), a
# new epoch with the same ring and the restored roles (the same on every shard restored from
# the same epoch); nodes restored into leave the re-join list.
cat > /tmp/shardctl-restore/roles.sql <<'SQL'
SELECT pg_catalog.to_regclass('shardctl.ring') IS NOT NULL AS has_ring \gset
\if :has_ring
SET synchronous_commit = local;
INSERT INTO shardctl.ring (epoch, algorithm, vnodes, nodes, created_by, primaries, rejoin)
SELECT r.epoch + 1, r.algorithm, r.vnodes, r.nodes, 'restore: the roles as restored',
       r.primaries || :'roles'::jsonb,
       (SELECT coalesce(pg_catalog.jsonb_agg(j.n), '[]'::jsonb)
          FROM pg_catalog.jsonb_array_elements_text(r.rejoin) AS j(n)
         WHERE j.n NOT IN (SELECT w.node
                             FROM pg_catalog.jsonb_each_text(:'roles'::jsonb) AS w(shard, node)))
  FROM (SELECT * FROM shardctl.ring ORDER BY epoch DESC LIMIT 1) AS r
 WHERE EXISTS (SELECT FROM pg_catalog.jsonb_each_text(:'roles'::jsonb) AS w(shard, node)
                WHERE coalesce(r.primaries ->> w.shard, w.shard || '-primary') <> w.node)
RETURNING 'shardctl: catalog epoch ' || epoch || ' names the restored primaries';
\endif
SQL
cat > /tmp/shardctl-restore/recover.sh <<'SCRIPT'
set -eu
postgres -D "$PGDATA" -c listen_addresses= -c unix_socket_directories=/tmp \
    -c archive_mode=off -c hot_standby=on \
    -c "restore_command=sh /tmp/shardctl-restore/wal.sh %f %p" \
    -c recovery_target_action=promote "$@" &
server=$!
until [ "$(psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d postgres -XAtc \
        'SELECT pg_catalog.pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    if ! kill -0 "$server" 2>/dev/null; then
        echo "shardctl: recovery failed" >&2
        exit 3
    fi
    sleep 0.5
done
psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d postgres -XAt -v ON_ERROR_STOP=1 \
    -c 'SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())' \
    > /tmp/shardctl-restore/walfile
psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d postgres -q -X -v ON_ERROR_STOP=1 \
    -v su="$SHARDCTL_SUPERUSER" -v rep="$SHARDCTL_REPLICATION_USER" -v app="$SHARDCTL_APP_USER" \
    -f /tmp/shardctl-restore/passwords.sql
if [ -n "${SHARDCTL_ROLES:-}" ]; then
    psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d "$SHARDCTL_DATABASE" -qAtX -v ON_ERROR_STOP=1 \
        -v roles="$SHARDCTL_ROLES" -f /tmp/shardctl-restore/roles.sql
fi
pg_ctl -D "$PGDATA" -m fast -w stop
SCRIPT
chown -R postgres: "$PGDATA" /tmp/shardctl-restore
chmod 700 "$PGDATA"
setpriv --reuid=postgres --regid=postgres --init-groups sh /tmp/shardctl-restore/recover.sh "$@"
walfile=$(cat /tmp/shardctl-restore/walfile)
if [ -n "${SHARDCTL_SEED_GENERATION:-}" ]; then
    timeline=$(printf '%s' "$walfile" | cut -c1-8)
    first=$(ls "$PGDATA/pg_wal" | grep -E "^$timeline[0-9A-F]{16}\$" | sort | head -n 1)
    seed="$SHARDCTL_SEED/$SHARDCTL_SEED_GENERATION"
    mkdir -p "$seed"
    cp "$PGDATA/pg_wal/$first" "$seed/$first.partial"
    if [ -f "$PGDATA/pg_wal/$timeline.history" ]; then
        cp "$PGDATA/pg_wal/$timeline.history" "$seed/"
    fi
    chown postgres: "$SHARDCTL_SEED" "$seed" "$seed"/*
fi
echo "shardctl: restored; the new timeline starts in $walfile"
"""

LABEL_BACKUP = "shardctl.backup"
"""On the backup node (``node``), a restore's one-shot container (``restore``) and a
repository helper (``files``)."""
LABEL_BACKUP_OF = "shardctl.backup-of"
"""On a repository helper: the cluster it was made for."""


def backup_node_spec(
    topology: Topology, repository: str, targets: Iterable[tuple[str, str, int]]
) -> ContainerSpec:
    """The backup node: on the repository's engine, the repository (host directory
    ``repository``) mounted read-write, one ``pg_receivewal`` per ``(shard, host, port)``
    target (each shard's acting primary as reached from that engine)."""
    spec = topology.spec
    environment = {
        "SHARDCTL_REPOSITORY": REPOSITORY_TARGET,
        "SHARDCTL_CLUSTER": topology.cluster,
        "SHARDCTL_SHARDS": " ".join(shard.name for shard in spec.shards),
        "SHARDCTL_TARGETS": "\n".join(f"{shard} {host} {port}" for shard, host, port in targets),
        "SHARDCTL_REPLICATION_USER": spec.credentials.replication_user,
        "SHARDCTL_SECRETS": SECRETS_DIR,
        "SHARDCTL_PASSFILE": PASSFILE,
        "SHARDCTL_APPLICATION": BACKUP_APPLICATION,
        "SHARDCTL_SLOT": BACKUP_SLOT,
        "SHARDCTL_RETRY": str(RECEIVE_RETRY_SECONDS),
        "SHARDCTL_SEGMENT_BYTES": str(SEGMENT_BYTES),
    }
    environment |= _client_tls(topology)
    return ContainerSpec(
        name=f"{topology.cluster}-backup",
        hostname=f"{topology.cluster}-backup",
        image=spec.image,
        entrypoint=("sh", "-c", BACKUP_BOOTSTRAP, "shardctl-backup"),
        command=(),
        user="root",
        environment=environment,
        labels={LABEL_CLUSTER: topology.cluster, LABEL_BACKUP: "node"},
        mounts=(Mount(repository, REPOSITORY_TARGET, bind=True),),
        ports=(),
        network=topology.network,
        secrets_dir=SECRETS_DIR,
        secrets=("replication", "ca.crt") if topology.tls is not None else ("replication",),
        stop_signal="SIGTERM",
        host_paths=True,
    )


CLIENT_CA = "/tmp/shardctl-client/ca.crt"
"""Where the backup node's bootstrap puts a copy of the cluster's CA certificate that its
``postgres`` user (``pg_receivewal``, ``pg_basebackup``) can read."""


FILES_LIFETIME = 900
"""Seconds a repository helper lives at most: one left by a killed process stops by itself."""


def repository_files_spec(cluster: str, image: str, repository: str) -> ContainerSpec:
    """A helper that holds the repository (host directory ``repository``) mounted for the
    CLI's file operations on a repository on another host while ``cluster``'s backup node is
    not running (a restore after ``down --volumes``): no network, nothing but ``sleep``. Not
    labelled with the cluster: it is not part of it (a restore in place wants none running)."""
    return ContainerSpec(
        name=f"{cluster}-backup-files",
        hostname=f"{cluster}-backup-files",
        image=image,
        entrypoint=("sleep", str(FILES_LIFETIME)),
        command=(),
        user="root",
        environment={},
        labels={LABEL_BACKUP: "files", LABEL_BACKUP_OF: cluster},
        mounts=(Mount(repository, REPOSITORY_TARGET, bind=True),),
        ports=(),
        network="none",
        secrets_dir=SECRETS_DIR,
        secrets=(),
        stop_signal="SIGKILL",
        restart="no",
        host_paths=True,
    )


def _client_tls(topology: Topology) -> dict[str, str]:
    """libpq's environment for the backup node's and restores' connections to the nodes."""
    extra: dict[str, str] = {}
    if topology.sslmode is not None:
        extra["PGSSLMODE"] = topology.sslmode
    if topology.tls is not None:
        extra["PGSSLROOTCERT"] = CLIENT_CA
    return extra


def restore_spec(
    topology: Topology,
    node: Node,
    mount: str,
    *,
    repository: str,
    base: str,
    wal: str,
    seed: tuple[str, int] | None,
    settings: Iterable[str],
    roles: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """A one-shot container that restores ``node``'s data volume (mounted at ``mount``) from
    the base backup ``base`` and the WAL folders under ``wal`` (both paths inside
    :data:`REPOSITORY_TARGET`, the host directory ``repository`` mounted read-only), with
    the recovery ``settings`` (``-c name=value`` arguments). ``seed``: the host folder of the
    restored cluster's WAL for this shard and the new generation to start there. ``roles``:
    every shard's restored primary (shard -> node), which the restored catalog must name."""
    spec = topology.spec
    environment = {
        "PGDATA": f"{mount}/pgdata",
        "SHARDCTL_SECRETS": SECRETS_DIR,
        "SHARDCTL_SUPERUSER": spec.credentials.superuser,
        "SHARDCTL_REPLICATION_USER": spec.credentials.replication_user,
        "SHARDCTL_APP_USER": spec.credentials.app_user,
        "SHARDCTL_BASE": f"{REPOSITORY_TARGET}/{base}",
        "SHARDCTL_WAL": f"{REPOSITORY_TARGET}/{wal}",
    }
    mounts = [
        Mount(node.volume, mount),
        Mount(repository, REPOSITORY_TARGET, read_only=True, bind=True),
    ]
    if roles is not None:
        environment["SHARDCTL_ROLES"] = json.dumps(dict(sorted(roles.items())))
        environment["SHARDCTL_DATABASE"] = spec.database
    if seed is not None:
        environment["SHARDCTL_SEED"] = SEED_TARGET
        environment["SHARDCTL_SEED_GENERATION"] = str(seed[1])
        mounts.append(Mount(seed[0], SEED_TARGET, bind=True))
    return ContainerSpec(
        name=f"{node.container}-restore",
        hostname=f"{node.name}-restore",
        image=spec.image,
        entrypoint=("sh", "-c", RESTORE_BOOTSTRAP, "shardctl-restore"),
        # The cluster's own settings (a standby's must not be lower than its primary's), then
        # this one-shot server's: no TCP, no certificates.
        command=(
            *server_settings(topology),
            "-c",
            "listen_addresses=",
            "-c",
            "ssl=off",
            *settings,
        ),
        user="root",
        environment=environment,
        labels={
            LABEL_CLUSTER: node.cluster,
            LABEL_SHARD: node.shard,
            LABEL_BACKUP: "restore",
        },
        mounts=tuple(mounts),
        ports=(),
        network=topology.network,
        secrets_dir=SECRETS_DIR,
        secrets=("superuser", "replication", "app"),
        restart="no",
        host_paths=True,
    )
