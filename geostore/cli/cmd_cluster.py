"""``geostore cluster up|status|down``: a local cluster of node processes on 127.0.0.1.

``up --topology FILE --dir DIR [--config CFG] [--mode multi-leader|single-leader]
[--leader-region R] [--no-netem]`` assigns a free loopback port to every node without one,
writes the resolved topology to ``DIR/topology.resolved.toml``, starts every node as its own
process (``geostore node``, in its own session so it outlives this command; output in
``DIR/nodes/ID/process.log``), writes ``DIR/cluster.json`` at once (so ``down`` can clean up
a failed start), and returns once every region's data group has a leader (with several
regions: a leader whose status says ``meta.ready``: the metadata group has a leader, the
topology's streams are mirrored there and it holds its home lease), or exits 1 after
``--timeout``. In single-leader mode it waits instead for the global group's leader, then
(at most 30 s more) for the leader to be in the preferred region (``--leader-region``, else
``raft.leader_region``, else the topology's first region).

``status --dir DIR`` prints one row per node: region, role, leader, term, commit, applied,
pid and whether it answers; with several regions (multi-leader) also the metadata group's
leader, voters and learners (as its leader reports them), every partition's home and epoch,
each region's home lease, and the replication lag per partition and destination. A two-region topology gets a warning: its
metadata group cannot survive the loss of either region.

``down --dir DIR`` sends SIGTERM to every node (graceful: they hand over leadership, flush
and close), waits up to ``--timeout``, then SIGKILLs the rest.

With more than one region and without ``--no-netem``, ``up`` also starts the WAN emulator
(``geostore netem serve``) as its own process and creates one proxy per directed
inter-region link and destination node, with the topology's latency, jitter and bandwidth.

Security (docs/security.md): by default ``up`` creates, when missing, the cluster CA and a
certificate per node in ``DIR/certs`` and an admin token (its hash in ``DIR/tokens.toml``,
its secret in ``DIR/admin.token``, all owner-only), starts every node with ``--certs`` and
``--tokens``, and writes ``https://`` addresses (the WAN proxies pass TLS through). Every
call this CLI makes to the nodes uses the CA and the admin token (:func:`_use_credentials`).
``--insecure`` starts plain-HTTP nodes without either, with a loud warning.

``cluster.json``: ``{"tls", "ca", "tokens", "token_file"`` (absent with ``--insecure``;
paths relative to DIR), ``"mode", "topology", "topology_resolved", "config", "netem",
"netem_pid", "regions": {R: {"nodes": [{"id", "api", "pid", "dir", "proxies", "cmd",
"added"?, "joined"?}]}},
"leaders", "meta", "started_at", "ready_at"}`` (single-leader adds ``"leader_region"``, and
``leaders`` is ``{"global": NODE}``). ``meta`` (several regions, multi-leader) is the metadata
group's ``{"leader", "voters", "learners"}`` as its leader reported them when ``up`` or the
last ``node add|remove|replace`` finished (``status`` shows the current ones). ``netem`` is
the emulator's API URL or null; a node's ``proxies`` map each other region to the address
through which that region reaches the node (``node add`` creates those of a new node and
adds them to ``wan.json``). Nodes of one region always talk directly (``api``).
``added``/``joined`` are ``node add``'s marks (:data:`MEMBERSHIP_MARKS`); ``up`` on an
existing folder rebuilds every entry and carries them over, every other command edits the
loaded file in place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

HELP = "start, inspect and stop a local cluster (cluster up|status|down)"
CLUSTER_FILE = "cluster.json"
#: Per destination node, per source region: the proxy address (``geostore node --wan``).
WAN_FILE = "wan.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{up,status,down,stop,start}")
    up = sub.add_parser("up", help="start every node of a topology as its own process")
    up.add_argument("--topology", required=True, help="topology TOML file (see regions/)")
    up.add_argument("--dir", required=True, help="cluster directory (data, logs, cluster.json)")
    up.add_argument("--config", default=None, help="config TOML file passed to every node")
    up.add_argument("--mode", default="multi-leader", choices=("multi-leader", "single-leader"))
    up.add_argument(
        "--leader-region",
        default=None,
        help="single-leader: the region that should lead (default: raft.leader_region, else "
        "the topology's first region)",
    )
    up.add_argument("--no-netem", action="store_true", help="no WAN proxies (nodes talk directly)")
    up.add_argument(
        "--insecure",
        action="store_true",
        help="plain HTTP, no certificates, no tokens (local experiments only)",
    )
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for leaders")
    up.add_argument("--json", action="store_true", help="print cluster.json instead of a table")
    up.add_argument(
        "--unsafe-no-fsync", action="store_true", help="UNSAFE: nodes ack without fsync"
    )
    st = sub.add_parser("status", help="show the nodes of a cluster started with up")
    st.add_argument("--dir", required=True)
    st.add_argument("--json", action="store_true")
    down = sub.add_parser("down", help="stop the nodes gracefully (SIGTERM, then SIGKILL)")
    down.add_argument("--dir", required=True)
    down.add_argument("--timeout", type=float, default=20.0, help="seconds before SIGKILL")
    for name, what in (("stop", "stop"), ("start", "restart")):
        one = sub.add_parser(
            name, help=f"{what} the nodes of one region (or one node) of a running cluster"
        )
        one.add_argument("--dir", required=True)
        which = one.add_mutually_exclusive_group(required=True)
        which.add_argument("--region", help="every node of this region")
        which.add_argument("--node", help="this node only")
        if name == "stop":
            one.add_argument(
                "--kill", action="store_true", help="SIGKILL at once (a crash), not SIGTERM"
            )
            one.add_argument("--timeout", type=float, default=20.0, help="seconds before SIGKILL")
        else:
            one.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")


def run(args: argparse.Namespace) -> int:
    action: str = args.action
    if action == "up":
        return _up(args)
    if action == "status":
        return _status(args)
    if action == "stop":
        return _stop_some(args)
    if action == "start":
        return _start_some(args)
    return _down(args)


# --- helpers ---------------------------------------------------------------------------------


#: Ports this process has handed out (a cluster's nodes and proxies never share one).
_HANDED_OUT: set[int] = set()


def _port_range() -> tuple[int, int]:
    """Where to pick listen ports: below the kernel's ephemeral range, which the machine's
    outgoing connections draw from. A port taken with ``bind(0)`` comes from that range, so
    an outgoing connection could grab it between this check and the node binding it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            ephemeral_lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_lo = 32768
    hi = ephemeral_lo - 1
    lo = max(1024, hi - 12_000)
    return (lo, hi) if hi - lo >= 1000 else (0, 0)


def _free_port() -> int:
    """A loopback port that is free now, not handed out before by this process."""
    lo, hi = _port_range()
    rng = random.SystemRandom()
    for _ in range(200 if hi else 0):
        port = rng.randint(lo, hi)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no usable range: any port
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
    _HANDED_OUT.add(chosen)
    return chosen


#: The credentials of the cluster this process talks to: (TLS context, bearer token); set by
#: :func:`_load_cluster` and ``up`` from cluster.json, used by every call of this CLI.
_CREDENTIALS: tuple[Any, str | None] = (None, None)


def _use_credentials(cluster: dict[str, Any], folder: str) -> None:
    """Call the nodes of ``cluster`` with its CA and admin token (when it has them)."""
    global _CREDENTIALS
    ctx = None
    if cluster.get("tls") and cluster.get("ca"):
        from geostore.client.tls import client_ssl

        ctx = client_ssl(os.path.join(folder, cluster["ca"]))
    token = None
    if cluster.get("token_file"):
        path = os.path.join(folder, cluster["token_file"])
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as f:
            token = f.read().strip() or None
    _CREDENTIALS = (ctx, token)


def _urlopen(req: urllib.request.Request | str, timeout_s: float) -> Any:
    """``urllib.request.urlopen`` with the cluster's CA and token (see :func:`_use_credentials`)."""
    ctx, token = _CREDENTIALS
    if isinstance(req, str):
        req = urllib.request.Request(req)
    if token is not None:
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout_s, context=ctx)


def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    try:
        with _urlopen(url, timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Keys of a node's cluster.json entry that ``node add`` writes and every rewrite keeps:
#: ``added`` (the node was added by ``node add``: a rerun with its id resumes that add) and
#: ``joined`` (the add completed: it restarts without ``--join``).
MEMBERSHIP_MARKS = ("added", "joined")


def _load_cluster(folder: str) -> dict[str, Any]:
    from geostore.errors import ApiError, ErrorCode

    path = os.path.join(folder, CLUSTER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as exc:
        raise ApiError(ErrorCode.MALFORMED, f"cannot read {path}: {exc}") from None
    _use_credentials(data, folder)
    return data


def _write_cluster(folder: str, data: dict[str, Any]) -> None:
    path = os.path.join(folder, CLUSTER_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _nodes(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (region, node)
        for region, info in cluster.get("regions", {}).items()
        for node in info.get("nodes", [])
    ]


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[("-" if c is None else str(c)) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- up --------------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    from geostore.config import NodeSpec, RegionSpec, Topology, load_config, load_topology
    from geostore.errors import ApiError, ErrorCode

    topology = load_topology(args.topology)
    config = load_config(args.config)  # validate before starting anything
    single = args.mode == "single-leader"
    preferred = args.leader_region or config.raft.leader_region or topology.regions[0].name
    if single and preferred not in topology.region_names():
        print(
            f"geostore cluster: --leader-region {preferred!r} is not a region of "
            f"{topology.name} ({', '.join(topology.region_names())})",
            file=sys.stderr,
        )
        return 2
    folder = os.path.abspath(args.dir)
    os.makedirs(folder, exist_ok=True)
    if args.insecure:
        print(
            "geostore cluster up: WARNING: --insecure: plain HTTP, no certificates, no tokens; "
            "anyone who reaches a port can read, write and inject peer traffic",
            file=sys.stderr,
        )
    fresh = not os.path.exists(os.path.join(folder, CLUSTER_FILE))
    if not fresh:
        old = _load_cluster(folder)
        running = [n["id"] for _, n in _nodes(old) if n.get("pid") and _alive(n["pid"])]
        if running and not old.get("stopped"):
            raise ApiError(
                ErrorCode.CONFLICT,
                f"{folder} already runs nodes {running}; run 'geostore cluster down' first",
            )
        if old.get("mode", args.mode) != args.mode:  # its groups are those of its mode
            raise ApiError(
                ErrorCode.CONFLICT,
                f"{folder} holds a {old['mode']} cluster; restart it with --mode {old['mode']}",
            )
    base = topology
    removed: list[str] = []
    #: what 'node add' marked on its entries (added: an add that a rerun may resume;
    #: joined: it completed), kept across this rewrite
    marks: dict[str, dict[str, Any]] = {}
    if not fresh:
        marks = {
            n["id"]: {k: n[k] for k in MEMBERSHIP_MARKS if k in n}
            for _, n in _nodes(old)
            if "id" in n
        }
        # a restart keeps the membership that node add/remove/replace left; the resolved
        # file's ports are stale, so nodes the original file gives no port get fresh ones
        old_resolved = old.get("topology_resolved")
        removed = list(old.get("removed", []))
        if old_resolved and os.path.exists(old_resolved):
            base = load_topology(old_resolved)
    fixed_ports = {n.id: n.port for n in topology.nodes()}
    regions = []
    for r in base.regions:
        nodes = tuple(
            NodeSpec(n.id, n.region, n.host or "127.0.0.1", fixed_ports.get(n.id) or _free_port())
            for n in r.nodes
            if n.id not in removed
        )
        regions.append(RegionSpec(r.name, nodes, r.intra_rtt_ms))
    resolved = Topology(base.name, topology.path, tuple(regions), base.links, base.streams)
    resolved_path = os.path.join(folder, "topology.resolved.toml")
    with open(resolved_path, "w", encoding="utf-8") as f:
        f.write(resolved.to_toml())
    security = {} if args.insecure else _ensure_security(folder, resolved)
    scheme = "http" if args.insecure else "https"
    cluster: dict[str, Any] = {
        **security,
        "mode": args.mode,
        "topology": os.path.abspath(args.topology),
        "topology_resolved": resolved_path,
        "config": os.path.abspath(args.config) if args.config else None,
        "netem": None,
        "netem_pid": None,
        "started_at": time.time(),
        "regions": {},
    }
    if single:
        cluster["leader_region"] = preferred
    if removed:
        cluster["removed"] = removed
    # The WAN proxies' ports are chosen now, so each node starts knowing how its region
    # reaches the others (wan.json); the emulator is started and given the plan below.
    plan: list[Any] = []
    wan_path = os.path.join(folder, WAN_FILE)
    use_netem = not args.no_netem and len(resolved.regions) > 1
    if use_netem:
        from netem.links import plan_links

        plan = plan_links(resolved, port_alloc=_free_port)
    via: dict[str, dict[str, str]] = {}
    for link in plan:
        via.setdefault(link.dst_node, {})[link.src_region] = f"{scheme}://{link.listen}"
    with open(wan_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"via": via}, f, indent=2)
    os.replace(wan_path + ".tmp", wan_path)
    for r in resolved.regions:
        entries = []
        for n in r.nodes:
            node_dir = os.path.join(folder, "nodes", n.id)
            os.makedirs(node_dir, exist_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "geostore",
                "node",
                "--topology",
                resolved_path,
                "--node",
                n.id,
                "--dir",
                node_dir,
                "--mode",
                args.mode,
                "--wan",
                wan_path,
            ]
            if args.config:
                cmd += ["--config", os.path.abspath(args.config)]
            if single and args.leader_region:
                cmd += ["--leader-region", args.leader_region]
            if security:
                cmd += ["--certs", os.path.join(folder, CERTS_DIR)]
                cmd += ["--tokens", os.path.join(folder, TOKENS_FILE)]
            if args.unsafe_no_fsync:
                cmd.append("--unsafe-no-fsync")
            if fresh:  # only a cluster's first start may write initial configurations
                cmd.append("--bootstrap")
            with open(os.path.join(node_dir, "process.log"), "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            entries.append(
                {
                    "id": n.id,
                    "api": f"{scheme}://{n.host}:{n.port}",
                    "pid": proc.pid,
                    "dir": node_dir,
                    "proxies": {},
                    # how 'cluster start' restarts it: never as the cluster's first start
                    "cmd": [a for a in cmd if a != "--bootstrap"],
                    **marks.get(n.id, {}),
                }
            )
        cluster["regions"][r.name] = {"nodes": entries}
    _write_cluster(folder, cluster)
    _use_credentials(cluster, folder)
    if use_netem:
        try:
            _start_netem(folder, plan, cluster)
        finally:  # so that 'cluster down' also stops a half-started emulator
            _write_cluster(folder, cluster)
    if not args.json:
        what = "the global group's leader" if single else "a leader in every region"
        print(f"started {len(_nodes(cluster))} nodes; waiting for {what}")
    if single:
        leaders = _wait_global_leader(cluster, args.timeout, preferred, quiet=args.json)
    else:
        leaders = _wait_leaders(cluster, args.timeout, quiet=args.json)
    if leaders is None:
        print(
            f"geostore cluster up: not every group elected a leader within {args.timeout:g} s; "
            f"see {folder}/nodes/*/node.log ('geostore cluster down --dir {args.dir}' stops it)",
            file=sys.stderr,
        )
        return 1
    cluster["leaders"] = leaders
    cluster["ready_at"] = time.time()
    if not single and len(resolved.regions) > 1:
        cluster["meta"] = _meta_members(cluster)
    _write_cluster(folder, cluster)
    if args.json:
        print(json.dumps(cluster, indent=2))
    else:
        print(_status_table(cluster))
        if cluster["netem"]:
            links = sum(len(n["proxies"]) for _, n in _nodes(cluster))
            print(f"netem: {cluster['netem']} with {links} link proxies (see cluster.json)")
        print(f"cluster.json: {os.path.join(folder, CLUSTER_FILE)}")
    return 0


#: Inside the cluster folder: certificates, the token table, the admin token's secret.
CERTS_DIR = "certs"
TOKENS_FILE = "tokens.toml"
ADMIN_TOKEN_FILE = "admin.token"


def _ensure_security(folder: str, topology: Any) -> dict[str, Any]:
    """Certificates for every node and an admin token, created when missing (owner-only).

    The token table (``tokens.toml``) holds only the SHA-256 of each secret; an operator may
    have listed tokens there before the first ``up`` (they are kept). The admin secret itself
    is in ``admin.token`` (0600) for the CLI and client of whoever owns the folder; when that
    file is missing a new admin token is minted and its hash appended to the table.
    Returns the cluster.json fields (paths relative to the folder).
    """
    import secrets

    from geostore.config.tokens import hash_secret, load_tokens, token_toml
    from geostore.transport.certs import CA_CERT, ensure_certs

    ensure_certs(topology, os.path.join(folder, CERTS_DIR))
    tokens_path = os.path.join(folder, TOKENS_FILE)
    secret_path = os.path.join(folder, ADMIN_TOKEN_FILE)
    if not os.path.exists(secret_path):
        names = load_tokens(tokens_path).names() if os.path.exists(tokens_path) else ()
        name = next(n for k in range(1000) if (n := f"admin{k or ''}") not in names)
        secret = "gst_" + secrets.token_urlsafe(32)
        entry = token_toml(name, hash_secret(secret), ("read", "write", "admin"))
        fd = os.open(tokens_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an operator's own table too: it lists who may do what
            os.write(fd, (b"\n" if os.fstat(fd).st_size else b"") + entry.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(secret_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (secret + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(secret_path + ".tmp", secret_path)
    return {
        "tls": True,
        "ca": os.path.join(CERTS_DIR, CA_CERT),
        "tokens": TOKENS_FILE,
        "token_file": ADMIN_TOKEN_FILE,
    }


def _start_netem(folder: str, plan: list[Any], cluster: dict[str, Any]) -> None:
    """Start the WAN emulator as its own process and give every inter-region link its proxy.

    A node's ``proxies`` map each other region to the address through which that region
    reaches the node (``http://host:port``), with the link's latency, jitter and bandwidth.
    """
    from netem.links import apply_links, wait_ready

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(os.path.join(folder, "netem.log"), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "geostore", "netem", "serve", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cluster["netem_pid"] = proc.pid
    wait_ready(url, timeout_s=30.0)
    applied = apply_links(plan, url)
    by_node = {n["id"]: n for _, n in _nodes(cluster)}
    for link in applied:
        host, port_ = link.address
        scheme = "https" if cluster.get("tls") else "http"
        by_node[link.plan.dst_node]["proxies"][link.plan.src_region] = f"{scheme}://{host}:{port_}"
    cluster["netem"] = url


def _poll_statuses(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]] | None:
    """One round of ``/v1/status`` over every node started: (region, node, status) of each
    that answered within 1 s, in the topology's order; None when a node's process exited
    (said on stderr, with the folder of its log), since then no wait can succeed."""
    polled: list[tuple[str, dict[str, Any], Any]] = []
    for region, info in cluster["regions"].items():
        for node in info["nodes"]:
            if not _alive(node["pid"]):
                print(f"node {node['id']} exited; see {node['dir']}", file=sys.stderr)
                return None
            try:
                polled.append((region, node, _get_json(node["api"] + "/v1/status", 1.0)))
            except (OSError, ValueError):
                continue
    return polled


def _wait_leaders(
    cluster: dict[str, Any], timeout_s: float, *, quiet: bool
) -> dict[str, str] | None:
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    while time.monotonic() < deadline:
        leaders: dict[str, str] = {}
        polled = _poll_statuses(cluster)
        if polled is None:
            return None
        for region, node, st in polled:
            # with several regions, a leader counts once the metadata group has a leader,
            # the topology's streams are mirrored here and it holds its home lease
            meta = (st or {}).get("meta")
            if meta is not None and not meta.get("ready"):
                continue
            for g in (st or {}).get("groups", {}).values():
                if g.get("role") == "leader":
                    leaders[region] = node["id"]
        if len(leaders) == len(cluster["regions"]):
            return leaders
        now = time.monotonic()
        if not quiet and now - last_report > 5:
            last_report = now
            print(f"  leaders so far: {len(leaders)}/{len(cluster['regions'])} regions")
        time.sleep(0.2)
    return None


def _wait_global_leader(
    cluster: dict[str, Any], timeout_s: float, preferred: str, *, quiet: bool
) -> dict[str, str] | None:
    """Single-leader: wait for the global group's leader, then (bounded) for the preferred
    region to lead; ``{"global": leader}``, or None when no leader came before the deadline."""
    start = time.monotonic()
    deadline = start + timeout_s
    # the handover needs the preferred voters caught up plus a transfer: a few election
    # timeouts; past this bound the cluster is usable anyway and up says where it leads
    placed_by: float | None = None
    leader: tuple[str, str] | None = None
    last_report = 0.0
    while time.monotonic() < deadline:
        leader = None
        polled = _poll_statuses(cluster)
        if polled is None:
            return None
        for region, node, st in polled:
            for g in (st or {}).get("groups", {}).values():
                if g.get("role") == "leader":
                    leader = (region, node["id"])
        now = time.monotonic()
        if leader is not None:
            if leader[0] == preferred:
                return {"global": leader[1]}
            if placed_by is None:
                placed_by = min(deadline, now + 30.0)
            elif now >= placed_by:
                break
        if not quiet and now - last_report > 5:
            last_report = now
            where = "none yet" if leader is None else f"{leader[1]} in {leader[0]}"
            print(f"  global leader: {where} (preferred region {preferred})")
        time.sleep(0.2)
    if leader is None:
        return None
    print(
        f"geostore cluster up: the global leader {leader[1]} is in {leader[0]}, not in the "
        f"preferred region {preferred} (a transfer is retried while {preferred} has a live voter)",
        file=sys.stderr,
    )
    return {"global": leader[1]}


# --- status ----------------------------------------------------------------------------------


def _meta_members(cluster: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata group's leader, voters and learners as its leader reports them (else
    as any answering node does); None without a metadata group or an answer."""
    seen: dict[str, Any] | None = None
    for _, node in _nodes(cluster):
        if not _alive(node["pid"]):
            continue
        try:
            meta = (_get_json(node["api"] + "/v1/status", 2.0) or {}).get("meta")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(meta, dict):
            continue
        seen = {k: meta.get(k) for k in ("leader", "voters", "learners")}
        if meta.get("role") == "leader":
            break
    return seen


def _status_rows(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for region, node in _nodes(cluster):
        row: dict[str, Any] = {
            "region": region,
            "node": node["id"],
            "pid": node.get("pid"),
            "api": node["api"],
            "alive": bool(node.get("pid")) and _alive(node["pid"]),
            "serving": False,
        }
        if row["alive"]:
            try:
                st = _get_json(node["api"] + "/v1/status", 2.0)
                row["serving"] = True
                for gid, g in st.get("groups", {}).items():
                    row.update(
                        group=gid,
                        role=g.get("role"),
                        leader=g.get("leader"),
                        term=g.get("term"),
                        commit=g.get("commit"),
                        applied=g.get("applied"),
                    )
                if st.get("meta") is not None:
                    row["meta"] = st["meta"]
                    row["leases"] = st.get("leases", {})
                if row.get("role") == "leader":
                    row["replication_lag"] = st.get("replication_lag", [])
                    geo = st.get("geo") or {}
                    row["geo_bytes"] = (
                        (geo.get("shipper") or {}).get("bytes_raw"),
                        (geo.get("shipper") or {}).get("bytes_compressed"),
                    )
            except (OSError, ValueError):
                pass
        rows.append(row)
    return rows


def _status_table(cluster: dict[str, Any], status_rows: list[dict[str, Any]] | None = None) -> str:
    cols = ["region", "node", "role", "leader", "term", "commit", "applied", "pid", "api"]
    rows = []
    for r in status_rows if status_rows is not None else _status_rows(cluster):
        state = r.get("role") if r["serving"] else ("not answering" if r["alive"] else "down")
        rows.append([r["region"], r["node"], state, *(r.get(c) for c in cols[3:])])
    return _table(cols, rows)


def _lag_table(rows: list[dict[str, Any]]) -> str | None:
    """Per (partition, destination), from each home region's leader: the geo shipping lag;
    beside it the per-event lag (home commit to apply, p50/p99 ms) the destination's leader
    measured for that partition."""
    cols = ["home", "stream", "part", "to", "state", "lag_events", "lag_ms", "inflight", "acked"]
    cols += ["apply_p50_ms", "apply_p99_ms"]
    applied: dict[tuple[Any, Any, Any, Any], dict[str, Any]] = {}
    for r in rows:
        for lag in r.get("replication_lag") or []:
            if lag.get("direction") == "in":
                key = (lag.get("stream"), lag.get("partition"), lag.get("source"), r["region"])
                applied[key] = lag
    out = []
    for r in rows:
        for lag in r.get("replication_lag") or []:
            if lag.get("direction", "out") != "out":
                continue
            seen = (
                applied.get(
                    (lag.get("stream"), lag.get("partition"), r["region"], lag.get("destination"))
                )
                or {}
            )
            out.append(
                [
                    r["region"],
                    lag.get("stream"),
                    lag.get("partition"),
                    lag.get("destination"),
                    lag.get("state"),
                    lag.get("events"),
                    lag.get("ms"),
                    lag.get("inflight_batches"),
                    lag.get("acked"),
                    _ms(seen.get("p50_ms")),
                    _ms(seen.get("p99_ms")),
                ]
            )
    return _table(cols, out) if out else None


def _ms(value: Any) -> Any:
    return f"{value:.1f}" if isinstance(value, int | float) else value


def _meta_text(rows: list[dict[str, Any]]) -> str | None:
    """The metadata group (leader, voters), homes and leases, as the answering nodes see them.

    Homes come from any node (every node holds the catalog); each region's lease from its
    own leader (the holder's view), else from any node (an observer's view).
    """
    metas = [r for r in rows if r.get("meta")]
    if not metas:
        return None
    # the leader's view of the membership (a lagging replica's may be older)
    first = next((r["meta"] for r in metas if r["meta"].get("role") == "leader"), metas[0]["meta"])
    leader = next((r["meta"]["leader"] for r in metas if r["meta"].get("leader")), None)
    out = [
        f"\nmetadata group: leader {leader or 'none known'}, voters "
        f"{', '.join(first.get('voters', []))}; learners "
        f"{', '.join(first.get('learners', [])) or 'none'}; "
        f"election timeout {first.get('election_ms')} ms"
    ]
    if first.get("warning"):
        out.append(f"WARNING: {first['warning']}")
    homes = max((r["meta"].get("homes", []) for r in metas), key=len)
    if homes:
        out.append("\nhomes")
        out.append(
            _table(
                ["stream", "part", "home", "epoch"],
                [[h["stream"], h["partition"], h["home"], h["epoch"]] for h in homes],
            )
        )
    leases: dict[str, dict[str, Any]] = {}
    for r in metas:
        for region, view in (r.get("leases") or {}).items():
            if region not in leases or view.get("view") == "holder":
                leases[region] = view
    if leases:
        out.append("\nhome leases (holder: as its holder counts it; observer: until another")
        out.append("node may count it expired)")
        out.append(
            _table(
                ["region", "holder", "valid", "remaining_ms", "view", "renewals", "meta_index"],
                [
                    [
                        region,
                        v.get("holder"),
                        v.get("valid"),
                        v.get("remaining_ms"),
                        v.get("view"),
                        v.get("renewals"),
                        v.get("index"),
                    ]
                    for region, v in sorted(leases.items())
                ],
            )
        )
    return "\n".join(out)


def _status(args: argparse.Namespace) -> int:
    cluster = _load_cluster(args.dir)
    if args.json:
        print(json.dumps(_status_rows(cluster), indent=2))
    else:
        rows = _status_rows(cluster)
        if cluster.get("mode") == "single-leader":
            group = next((r["group"] for r in rows if r.get("group")), "data-global")
            print(
                f"mode single-leader: one group {group} over every region, "
                f"preferred leader region {cluster.get('leader_region')}"
            )
        print(_status_table(cluster, rows))
        meta_text = _meta_text(rows)
        if meta_text:
            print(meta_text)
        lag = _lag_table(rows)
        if lag is not None:
            print("\nreplication (per home partition and destination, from each home leader);")
            print("apply_p50/p99: per-event lag, home commit to apply in the destination, wall")
            print("clocks (includes clock skew across machines; exact on one machine)")
            print(lag)
            for r in rows:
                raw, packed = r.get("geo_bytes") or (None, None)
                if raw:
                    print(f"  {r['region']} shipped {raw} bytes raw, {packed} compressed")
        if cluster.get("netem"):
            pid = cluster.get("netem_pid")
            state = "running" if pid and _alive(pid) else "down"
            print(f"netem: {cluster['netem']} ({state}, pid {pid})")
    return 0


# --- down ------------------------------------------------------------------------------------


def _down(args: argparse.Namespace) -> int:
    cluster = _load_cluster(args.dir)
    pids = {n["id"]: n["pid"] for _, n in _nodes(cluster) if n.get("pid")}
    if cluster.get("netem_pid"):
        pids["netem"] = cluster["netem_pid"]
    live = {nid: pid for nid, pid in pids.items() if _alive(pid)}
    for pid in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and any(_alive(p) for p in live.values()):
        time.sleep(0.1)
    killed = []
    for nid, pid in live.items():
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(nid)
            except ProcessLookupError:
                pass
    kill_deadline = time.monotonic() + 5
    while time.monotonic() < kill_deadline and any(_alive(p) for p in live.values()):
        time.sleep(0.05)
    cluster["stopped"] = True
    cluster["stopped_at"] = time.time()
    _write_cluster(args.dir, cluster)
    graceful = len(live) - len(killed)
    print(f"stopped {len(live)} processes ({graceful} gracefully, {len(killed)} killed)")
    if killed:
        print(f"killed after {args.timeout:g} s: {', '.join(killed)}")
    return 0


# --- stop / start one region or node ---------------------------------------------------------


def _selected(cluster: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    from geostore.errors import ApiError, ErrorCode

    chosen = [n for region, n in _nodes(cluster) if region == args.region or n["id"] == args.node]
    if not chosen:
        names = (
            ", ".join(cluster.get("regions", {}))
            if args.region
            else ", ".join(n["id"] for _, n in _nodes(cluster))
        )
        raise ApiError(
            ErrorCode.MALFORMED,
            f"no {'region ' + args.region if args.region else 'node ' + args.node} in this "
            f"cluster (there are: {names})",
        )
    return chosen


def _stop_some(args: argparse.Namespace) -> int:
    """Stop some nodes (an outage drill: ``--kill`` is a crash); the rest keeps running."""
    cluster = _load_cluster(args.dir)
    live = {n["id"]: n["pid"] for n in _selected(cluster, args) if _alive(n["pid"])}
    sig = signal.SIGKILL if args.kill else signal.SIGTERM
    for pid in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and any(_alive(p) for p in live.values()):
        time.sleep(0.05)
    for pid in live.values():
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    how = "killed" if args.kill else "stopped"
    print(f"{how} {len(live)} node(s): {', '.join(live) or 'none was running'}")
    return 0


def _start_some(args: argparse.Namespace) -> int:
    """Restart stopped nodes from their own data (same identity, same arguments)."""
    cluster = _load_cluster(args.dir)
    _use_credentials(cluster, args.dir)
    started = []
    for node in _selected(cluster, args):
        if _alive(node["pid"]):
            continue
        cmd = node.get("cmd")
        if not cmd:
            print(f"node {node['id']}: this cluster.json predates 'cluster start'; restart it "
                  "with 'cluster down' and 'cluster up'", file=sys.stderr)  # fmt: skip
            return 1
        with open(os.path.join(node["dir"], "process.log"), "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        node["pid"] = proc.pid
        started.append(node)
    cluster.pop("stopped", None)
    _write_cluster(args.dir, cluster)
    deadline = time.monotonic() + args.timeout
    waiting = {n["id"]: n for n in started}
    while waiting and time.monotonic() < deadline:
        for nid, node in list(waiting.items()):
            if not _alive(node["pid"]):
                print(f"node {nid} exited; see {node['dir']}/process.log", file=sys.stderr)
                return 1
            try:
                st = _get_json(node["api"] + "/v1/health", 1.0)
            except (OSError, ValueError):
                continue
            if isinstance(st, dict) and st.get("status") == "ok":
                del waiting[nid]
        time.sleep(0.1)
    if waiting:
        print(f"started, not yet healthy after {args.timeout:g} s: {', '.join(waiting)}")
        return 1
    print(f"started {len(started)} node(s): {', '.join(n['id'] for n in started) or 'none'}")
    return 0
