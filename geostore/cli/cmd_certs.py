"""``geostore certs``: the cluster CA, node certificates and client tokens.

``init --topology FILE --dir DIR`` creates a cluster CA and one certificate per node of the
topology (identity SAN ``geostore://<cluster-id>/node/<node-id>``; the cluster id defaults to
the topology's name), plus ``--client NAME`` operator certificates; the directory is 0700 and
every file 0600. An existing CA is never overwritten without ``--force``. ``token --name N
--roles read,write --file tokens.toml`` mints a bearer token: the secret is printed once and
only its SHA-256 is appended to the token file (created 0600 when missing).
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "create the cluster CA and node certificates (certs init), mint client tokens (certs token)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{init,token}")
    p = sub.add_parser(
        "init",
        help="create a cluster CA and one certificate per node",
        description="create a cluster CA and one certificate per node of a topology",
    )
    p.add_argument("--topology", required=True, help="topology TOML file")
    p.add_argument("--dir", required=True, help="directory for the CA and certificates")
    p.add_argument("--cluster-id", default=None, help="cluster id (default: the topology's name)")
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    p.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also issue an operator client certificate NAME (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing CA and every cert")
    t = sub.add_parser(
        "token",
        help="mint a client bearer token",
        description="mint a bearer token: print the secret once, append its hash to the file",
    )
    t.add_argument("--name", required=True, help="token name (shown in logs and 403 answers)")
    t.add_argument("--roles", required=True, help="comma-separated roles: read,write,admin")
    t.add_argument("--file", required=True, help="token file (TOML), created when missing")


def run(args: argparse.Namespace) -> int:
    from geostore.errors import ConfigError

    try:
        if args.action == "init":
            return _init(args)
        return _token(args)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    from geostore.config import load_topology
    from geostore.transport.certs import init_certs

    if args.days < 1:
        print("error: --days must be at least 1", file=sys.stderr)
        return 2
    topology = load_topology(args.topology)
    paths = init_certs(
        topology,
        args.dir,
        args.cluster_id,
        days=args.days,
        force=args.force,
        clients=args.client,
    )
    cluster_id = args.cluster_id or topology.name
    print(f"cluster {cluster_id}: CA and {len(paths.nodes)} node certificates in {paths.dir}")
    for path in paths.created:
        print(f"  wrote {path} (0600)")
    print(f"keep {paths.ca_key} offline once the nodes have their certificates")
    return 0


def _token(args: argparse.Namespace) -> int:
    import secrets

    from geostore.config.tokens import (
        hash_secret,
        load_tokens,
        parse_roles,
        token_toml,
        valid_token_name,
    )

    roles = parse_roles(args.roles)
    existing = load_tokens(args.file) if os.path.exists(args.file) else None
    if existing is not None and args.name in existing.names():
        print(f"error: {args.file}: a token named {args.name!r} exists already", file=sys.stderr)
        return 1
    if not valid_token_name(args.name):
        print(f"error: invalid token name {args.name!r} (letters, digits, _.@-)", file=sys.stderr)
        return 2
    secret = "gst_" + secrets.token_urlsafe(32)
    entry = token_toml(args.name, hash_secret(secret), roles)
    fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        prefix = b"\n" if os.fstat(fd).st_size else b""
        os.write(fd, prefix + entry.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    print(f"token {args.name} ({','.join(roles)}) added to {args.file}; its secret (shown once):")
    print(secret)
    return 0
