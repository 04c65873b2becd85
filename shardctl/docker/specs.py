"""What a node's container is, built once for ``up`` and for ``compose``.

:func:`container_spec` is the single description of a node's container: image, bootstrap
script, server settings, environment, volume, labels, port, network and where the secret files
go. ``up`` creates exactly it through :mod:`shardctl.docker.engine`; ``compose`` renders exactly
it, so the compose file cannot drift from what ``up`` makes.

Containers do not depend on an image's entrypoint: the bootstrap script runs as the ``postgres``
user, so any image with the server binaries on PATH and a ``postgres`` user works (the official
images, the locally built test image).
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg.conninfo import make_conninfo

from shardctl.config import addresses
from shardctl.config.credentials import POOLER_ADMIN, SERVER_FILES
from shardctl.config.schema import Role
from shardctl.config.topology import Node, Topology
from shardctl.docker.records import (
    ContainerSpec,
    Mount,
    Port,
    node_labels,
    pooler_labels,
)
from shardctl.errors import TopologyError

SECRETS_DIR = "/tmp/shardctl"
"""Where the password files go in a container (copied in by ``up``, secrets in compose)."""
SECRET_NAMES = ("superuser", "replication")
"""Every secret file a container may get: a primary both (the superuser's only for initdb, and
deleted after it), a replica the replication password only."""
DEFAULT_MOUNT = "/var/lib/postgresql"
"""Where the data volume goes in an image that declares no volume (owned by postgres there)."""
OFFICIAL_IMAGE_MOUNT = "/var/lib/postgresql/data"
"""The volume the official postgres images (up to 17) declare."""
TLS_FILES = SERVER_FILES
"""With ``tls: required``, every node's certificate, key and the clients' root, in
:data:`SECRETS_DIR` (the key 0600 and owned by postgres, as the server insists)."""
PASSFILE = "/tmp/shardctl-pgpass"
"""The replication password as a libpq password file, written by the bootstrap (mode 0600)."""
FIRST_START_ONLY = frozenset({"SHARDCTL_ROLE", "SHARDCTL_PRIMARY_CONNINFO"})
"""Environment read only on a node's first start (empty volume): initdb or clone from where.
A role change alters them without making the running container outdated."""
SCHEMA_TARGET = "/shardctl/schema.sql"
"""Where a compose file mounts the schema; ``up`` applies the schema itself over SQL."""

# The container's whole life, as the postgres user. Values arrive as environment variables and
# the server's settings as arguments ("$@"): nothing is ever spliced into this text. No password
# is ever an argument of a command either: passwords go from the secret files into libpq
# password files (printf is a shell builtin, so its arguments never reach the process list),
# initdb's --pwfile, and psql's \set from a file.
BOOTSTRAP = r"""set -eu
umask 077
# A libpq password file line; ':' and '\' in a password are escaped as the format wants.
pgpass_line() {
    printf '*:*:*:%s:%s\n' "$1" "$(sed -e 's/[\\:]/\\&/g' "$2")"
}
# a /proc/net/route address (hex, host byte order) -> dotted quad
dotted() {
    n=$((0x$1))
    printf '%d.%d.%d.%d' $((n & 255)) $((n >> 8 & 255)) $((n >> 16 & 255)) $((n >> 24 & 255))
}
# A standby reaches its upstream with the replication password from this file (passfile= in
# primary_conninfo), never from a command line or its configuration. Written at every start:
# whether this server is a standby is decided by its data directory (standby.signal), which a
# switchover or failover changes, not by how the container was created.
pgpass_line "$SHARDCTL_REPLICATION_USER" "$SHARDCTL_SECRETS/replication" > "$SHARDCTL_PASSFILE"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"
    if [ "$SHARDCTL_ROLE" = primary ]; then
        initdb -D "$PGDATA" -U "$SHARDCTL_SUPERUSER" --pwfile="$SHARDCTL_SECRETS/superuser" \
            --auth=scram-sha-256 --encoding=UTF8 --no-instructions
        PGPASSFILE=/tmp/shardctl-init-pgpass
        export PGPASSFILE
        pgpass_line "$SHARDCTL_SUPERUSER" "$SHARDCTL_SECRETS/superuser" > "$PGPASSFILE"
        pg_ctl -D "$PGDATA" -w -o "-c listen_addresses= -c unix_socket_directories=/tmp" start
        psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d postgres -q -v ON_ERROR_STOP=1 \
            -v role="$SHARDCTL_REPLICATION_USER" -v db="$SHARDCTL_DATABASE" <<'SQL'
\set pw `cat "$SHARDCTL_SECRETS/replication"`
CREATE ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'pw';
\unset pw
CREATE DATABASE :"db";
SQL
        if [ -n "${SHARDCTL_SCHEMA:-}" ] && [ -s "$SHARDCTL_SCHEMA" ]; then
            psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d "$SHARDCTL_DATABASE" -q -v ON_ERROR_STOP=1 \
                -f "$SHARDCTL_SCHEMA"
        fi
        pg_ctl -D "$PGDATA" -w -m fast stop
        rm -f "$PGPASSFILE"
        unset PGPASSFILE
        # Needed for initdb only: from now on the superuser logs in from shardctl's host.
        rm -f "$SHARDCTL_SECRETS/superuser" 2>/dev/null || :
    else
        # The slot is normally made by shardctl; -C makes it when running without shardctl.
        until pg_basebackup -d "$SHARDCTL_PRIMARY_CONNINFO" -D "$PGDATA" -X stream \
                -S "$SHARDCTL_SLOT" --checkpoint=fast \
              || { rm -rf "$PGDATA"; pg_basebackup -d "$SHARDCTL_PRIMARY_CONNINFO" -D "$PGDATA" \
                -X stream -C -S "$SHARDCTL_SLOT" --checkpoint=fast; }; do
            echo "shardctl: cloning from the primary failed; retrying" >&2
            rm -rf "$PGDATA"
            sleep 2
        done
        touch "$PGDATA/standby.signal"
        printf "primary_conninfo = '%s'\nprimary_slot_name = '%s'\n" \
            "$SHARDCTL_PRIMARY_CONNINFO" "$SHARDCTL_SLOT" >> "$PGDATA/postgresql.auto.conf"
    fi
fi
# pg_hba.conf, rewritten at every start from this container's network (a re-created network
# may have another subnet): who may connect from where. See docs/security.md. With TLS
# required, every TCP line that lets a login in is hostssl, so plaintext TCP matches none.
tcp=${SHARDCTL_HBA_TCP:-host}
gateway='' subnet='' netmask=''
while read -r _ destination via _ _ _ _ mask _; do
    if [ "$destination" = 00000000 ]; then
        gateway=$via
    elif [ "$via" = 00000000 ] && [ -z "$subnet" ] && [ "$destination" != Destination ]; then
        subnet=$destination netmask=$mask
    fi
done < /proc/net/route
{
    echo "# Written by shardctl at every start of this container; edits are lost."
    echo "local all all scram-sha-256"
    if [ -n "$gateway" ]; then
        # Connections to the published port arrive from the network's gateway: shardctl's host.
        printf '%s all %s %s/32 scram-sha-256\n' "$tcp" "$SHARDCTL_SUPERUSER" \
            "$(dotted "$gateway")"
    fi
    if [ -n "${SHARDCTL_OTHER_HOSTS:-}" ] && [ -n "$subnet" ]; then
        # Several hosts: shardctl's host and other hosts' replicas reach the published port
        # through NAT, from their own addresses. The superuser stays refused from this host's
        # other containers.
        printf 'host all %s %s %s reject\n' "$SHARDCTL_SUPERUSER" \
            "$(dotted "$subnet")" "$(dotted "$netmask")"
        printf '%s all %s all scram-sha-256\n' "$tcp" "$SHARDCTL_SUPERUSER"
        printf '%s replication %s all scram-sha-256\n' "$tcp" "$SHARDCTL_REPLICATION_USER"
    fi
    printf 'host all %s all reject\n' "$SHARDCTL_SUPERUSER"
    if [ -n "$subnet" ]; then
        printf '%s replication %s %s %s scram-sha-256\n' "$tcp" "$SHARDCTL_REPLICATION_USER" \
            "$(dotted "$subnet")" "$(dotted "$netmask")"
    fi
    printf '%s %s %s all scram-sha-256\n' "$tcp" "$SHARDCTL_DATABASE" "$SHARDCTL_APP_USER"
} > "$PGDATA/pg_hba.conf"
exec postgres -D "$PGDATA" "$@"
"""


def data_mount(declared_volumes: Iterable[str]) -> str:
    """Where the data volume is mounted, given the volumes the image declares.

    Mounting on the image's own declared volume keeps Docker from adding an anonymous one.
    """
    return next(iter(sorted(declared_volumes)), DEFAULT_MOUNT)


def server_settings(topology: Topology, *, declared: bool = True) -> list[str]:
    """``-c name=value`` arguments every node's postgres runs with: the ones shardctl manages,
    and with ``declared`` the topology's ``postgres:`` settings too (a compose file; ``up``
    applies those with ``ALTER SYSTEM`` instead: a reload, when the server allows it)."""
    settings: dict[str, object] = {
        "listen_addresses": "*",
        "port": addresses.CONTAINER_PORT,
        "unix_socket_directories": "/tmp",
        "password_encryption": "scram-sha-256",
        "wal_level": "logical",
        "max_wal_senders": 20,
        "max_replication_slots": 20,
        "wal_keep_size": "256MB",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "track_commit_timestamp": "on",
    }
    if topology.tls is not None:
        settings |= {
            "ssl": "on",
            "ssl_cert_file": f"{SECRETS_DIR}/server.crt",
            "ssl_key_file": f"{SECRETS_DIR}/server.key",
        }
    if declared:
        settings.update(topology.spec.postgres)
    args: list[str] = []
    for name, value in settings.items():
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        args += ["-c", f"{name}={text}"]
    return args


def container_spec(
    topology: Topology,
    node: Node,
    mount: str,
    *,
    schema_file: str | None = None,
    compose: bool = False,
) -> ContainerSpec:
    """The container of ``node``, its data volume mounted at ``mount``.

    For ``compose``, ``schema_file`` is a host path mounted for the primary's first start, and
    the ``postgres:`` settings go on the command line; ``up`` passes none, applies the schema
    over SQL and the settings with ``ALTER SYSTEM`` (:mod:`shardctl.ops.settings`), so that
    changing them never changes the container.
    """
    spec = topology.spec
    environment = {
        "PGDATA": f"{mount}/pgdata",
        "SHARDCTL_ROLE": node.role.value,
        "SHARDCTL_SECRETS": SECRETS_DIR,
        "SHARDCTL_SUPERUSER": spec.credentials.superuser,
        "SHARDCTL_REPLICATION_USER": spec.credentials.replication_user,
        "SHARDCTL_APP_USER": spec.credentials.app_user,
        "SHARDCTL_DATABASE": spec.database,
        "SHARDCTL_PASSFILE": PASSFILE,
        "SHARDCTL_SLOT": node.slot,
    }
    placements = topology.placements()
    if len(placements) > 1 or any(
        p.endpoint and not p.endpoint.startswith("unix://") for p in placements
    ):
        # See pg_hba in the bootstrap: several hosts, or one that is not this machine (shardctl
        # reaches its published ports by NAT from its own address, not the network's gateway).
        environment["SHARDCTL_OTHER_HOSTS"] = "1"
    if topology.tls is not None:
        environment["SHARDCTL_HBA_TCP"] = "hostssl"
    mounts = [Mount(node.volume, mount)]
    if node.role is Role.REPLICA:
        environment["SHARDCTL_PRIMARY_CONNINFO"] = upstream_conninfo(topology, node)
    elif schema_file is not None:
        environment["SHARDCTL_SCHEMA"] = SCHEMA_TARGET
        mounts.append(Mount(schema_file, SCHEMA_TARGET, read_only=True, bind=True))
    return ContainerSpec(
        name=node.container,
        hostname=node.name,
        image=spec.image,
        entrypoint=("sh", "-c", BOOTSTRAP, "shardctl-node"),
        command=tuple(server_settings(topology, declared=compose)),
        user="postgres",
        environment=environment,
        labels=node_labels(node),
        mounts=tuple(mounts),
        ports=(Port(addresses.CONTAINER_PORT, node.placement.bind_address, node.host_port),),
        network=topology.network,
        secrets_dir=SECRETS_DIR,
        secrets=secret_names(node, tls=topology.tls is not None),
        first_start_only=FIRST_START_ONLY,
        log_max_size=spec.logs.max_size,
        log_max_files=spec.logs.max_files,
    )


def secret_names(node: Node, *, tls: bool = False) -> tuple[str, ...]:
    """The secret files ``node``'s container gets: a primary's initdb needs the superuser's
    password; a replica never holds it (a failover promotes it without one). With ``tls``,
    every node its certificate and key (any node serves clients) and the CA it verifies its
    upstream by."""
    names = SECRET_NAMES if node.role is Role.PRIMARY else ("replication",)
    return names + TLS_FILES if tls else names


def upstream_conninfo(topology: Topology, node: Node) -> str:
    """``primary_conninfo`` of a replica: its shard's acting primary, as the replication role.

    On the primary's engine it is the primary's container on the engine's network; on another
    engine (another host) the primary's advertised address and published port, the same way
    clients reach it: container names mean nothing across hosts. The password comes from
    :data:`PASSFILE`; ``application_name`` is the node's name, which ``pg_stat_replication``
    and ``synchronous_standby_names`` know it by.
    """
    host, port = addresses.upstream_address(topology, node)
    extra = {"sslmode": node.sslmode} if node.sslmode is not None else {}
    if topology.tls is not None:
        extra["sslrootcert"] = f"{SECRETS_DIR}/ca.crt"
    return make_conninfo(
        host=host,
        port=str(port),
        user=topology.spec.credentials.replication_user,
        passfile=PASSFILE,
        application_name=node.name,
        **extra,
    )


POOLER_DIR = "/tmp/shardctl-pgbouncer"
"""Where the pooler's bootstrap writes pgbouncer.ini and the userlist (mode 0600)."""
POOLER_SECRETS = ("app", "pooler")
"""A pooler's secret files: the application role's password (PgBouncer logs in to the server
with it, by SCRAM) and its admin console's."""

# A PgBouncer's whole life, as the postgres user. Like the node's bootstrap, values arrive as
# environment variables and passwords go from the secret files into the userlist with printf
# (a builtin: never on a process list); the file is written at every start, mode 0600.
POOLER_BOOTSTRAP = r"""set -eu
umask 077
mkdir -p "$SHARDCTL_POOLER_DIR"
# userlist.txt doubles a '"' inside a quoted field.
field() { sed -e 's/"/""/g' "$1"; }
{
    printf '"%s" "%s"\n' "$SHARDCTL_APP_USER" "$(field "$SHARDCTL_SECRETS/app")"
    printf '"%s" "%s"\n' "$SHARDCTL_POOLER_ADMIN" "$(field "$SHARDCTL_SECRETS/pooler")"
} > "$SHARDCTL_POOLER_DIR/userlist.txt"
cat > "$SHARDCTL_POOLER_DIR/pgbouncer.ini" <<EOF
; Written by shardctl at every start of this container; edits are lost.
[databases]
$SHARDCTL_DATABASE = host=$SHARDCTL_TARGET_HOST port=$SHARDCTL_TARGET_PORT dbname=$SHARDCTL_DATABASE
[pgbouncer]
listen_addr = *
listen_port = $SHARDCTL_LISTEN_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $SHARDCTL_POOLER_DIR/userlist.txt
admin_users = $SHARDCTL_POOLER_ADMIN
pool_mode = $SHARDCTL_POOL_MODE
default_pool_size = $SHARDCTL_POOL_SIZE
max_client_conn = $SHARDCTL_MAX_CLIENT_CONN
max_db_connections = $SHARDCTL_POOL_SIZE
ignore_startup_parameters = extra_float_digits
; A recreated node container (re-clone, new configuration) has a new address, and a node
; restarts on a role change: look its name up again and retry its login within a second.
dns_max_ttl = 1
server_login_retry = 1
server_tls_sslmode = $SHARDCTL_SERVER_SSLMODE
EOF
exec pgbouncer "$SHARDCTL_POOLER_DIR/pgbouncer.ini"
"""


def pooler_spec(topology: Topology, node: Node) -> ContainerSpec:
    """The PgBouncer container in front of ``node``: on its engine and network, published on
    the node's pooler port, pointing at the node itself whatever its role."""
    pooler = topology.pooler(node.shard)
    if pooler is None or node.pooler_port is None:
        raise TopologyError(f"{node.name} has no pooler in {topology.path}")
    host, port = addresses.pooler_target(node)
    environment = {
        "SHARDCTL_SECRETS": SECRETS_DIR,
        "SHARDCTL_POOLER_DIR": POOLER_DIR,
        "SHARDCTL_APP_USER": topology.spec.credentials.app_user,
        "SHARDCTL_POOLER_ADMIN": POOLER_ADMIN,
        "SHARDCTL_DATABASE": topology.spec.database,
        "SHARDCTL_TARGET_HOST": host,
        "SHARDCTL_TARGET_PORT": str(port),
        "SHARDCTL_LISTEN_PORT": str(addresses.POOLER_PORT),
        "SHARDCTL_POOL_MODE": pooler.mode.value,
        "SHARDCTL_POOL_SIZE": str(pooler.pool_size),
        "SHARDCTL_MAX_CLIENT_CONN": str(pooler.max_client_conn),
        "SHARDCTL_SERVER_SSLMODE": node.sslmode or "prefer",
    }
    return ContainerSpec(
        name=node.pooler_container,
        hostname=f"{node.name}-pooler",
        image=topology.pooler_image(node.shard),
        entrypoint=("sh", "-c", POOLER_BOOTSTRAP, "shardctl-pooler"),
        command=(),
        user="postgres",
        environment=environment,
        labels=pooler_labels(node),
        mounts=(),
        ports=(Port(addresses.POOLER_PORT, node.placement.bind_address, node.pooler_port),),
        network=topology.network,
        secrets_dir=SECRETS_DIR,
        secrets=POOLER_SECRETS,
        stop_signal="SIGTERM",  # PgBouncer's immediate shutdown (SIGINT waits for clients)
        log_max_size=topology.spec.logs.max_size,
        log_max_files=topology.spec.logs.max_files,
    )
