"""``geostore node``: run one node process (what ``cluster up`` starts on each node).

``geostore node --topology FILE --node ID --dir DIR [--config CFG] [--override CFG]
[--port P] [--bootstrap | --join] [--wan FILE]`` opens (or creates) the node's data dir, joins its region's Raft group with the
peers the topology names (every node of the region needs a host and port there; ``--port``
only overrides this node's own), serves the HTTP API and peer links on one port, and runs
until SIGTERM or SIGINT, then shuts down gracefully (exit status 0). ``--wan`` names the
``wan.json`` of ``cluster up``: the proxy addresses through which this node's region reaches
each node of the other regions (geo shipping, forwarded writes and strong reads use them).

``--mode single-leader`` hosts one global data group (``data-global``) whose voters are every
node of every region, with WAN-sized election timeouts; its Raft traffic to other regions
takes the ``--wan`` proxies. ``--leader-region R`` (or ``raft.leader_region``; default the
topology's first region) names the region whose voter should lead: a leader elsewhere hands
over to the most caught-up live voter there.

Empty storage is accepted only with ``--bootstrap`` (a founding member of a new cluster;
``cluster up`` passes it on a cluster's first start) or ``--join`` (a new identity that
``node add`` adds). Otherwise the node refuses to start: a founding member whose disk was
wiped may have voted or acknowledged entries it lost, and must come back under a new id
(``node replace``), never under its old one.

``--certs DIR`` (``geostore certs init`` or ``cluster up``) serves HTTPS with the node's
certificate, requires node certificates on peer links and dials peers with mTLS;
``--tokens FILE`` requires a bearer token with the route's role from every client (it needs
``--certs``). See docs/security.md.

``--unsafe-no-fsync`` acknowledges appends without fsync: it exists ONLY so a fault test can
show that the checks catch lost acknowledged writes. Never use it otherwise.

With ``GEOSTORE_PROFILE=DIR`` in its environment a node runs its event loop under cProfile
and writes ``DIR/<node>.prof`` when it exits (benchmarks use it to find hot paths).

Membership of a cluster started with ``geostore cluster up`` (one change at a time):

- ``node add --cluster DIR --region R --id NEW``: start a node under a fresh identity with
  ``--join`` (empty storage, no bootstrap; it hosts every group it belongs to, the
  metadata group included, with an empty replica), create the WAN proxies through which
  the other regions reach it (with netem; written to ``wan.json`` too), tell every live node
  of every region its address and region (``/v1/admin/peers``), add it as a learner of the
  region's group, wait until it caught up (by log or by snapshot), promote it to voter.
  With a metadata group (multi-leader mode, two regions or more: the nodes decide the
  same way), then add it as a learner of ``meta`` (``/v1/admin/meta/members``, forwarded to
  the metadata leader) and wait until its metadata replica applied the commit index the
  leader answered with.
- ``node remove --cluster DIR --node ID``: with a metadata group, first remove it from
  ``meta`` (a voter: the leader first promotes a caught-up learner of the same region, and
  refuses with 409 when the region has no other live node); then remove it from the
  region's group, then stop its process.
- ``node replace --cluster DIR --node OLD [--new-id NEW]``: add NEW, then remove OLD (so NEW
  may take OLD's metadata vote). The way to bring back a node whose disk was wiped: it must
  never rejoin under its old id (it may have voted or acknowledged entries it no longer
  has).

Each step is retried on 503/504 until ``--timeout`` (every step is idempotent: a repeated
one answers the same, ``/v1/admin/members`` with ``"already": true``).

An interrupted ``node add`` resumes when rerun with the same id and region: the id is in
the resolved topology under that region, so the topology (and port) are kept; the process
is started only if its recorded pid is dead, with ``--join`` only while it is not a voter
of its region's group (a learner counts in no quorum, so an empty replica may start over;
``--join`` also lets the empty metadata replica of a voter that is no metadata member yet
start). After the add completed (``joined`` in ``cluster.json``) it restarts without
``--join``, and a voter whose data group storage is empty (a wiped disk) is refused, so it
never comes back under its old identity. Existing WAN proxies are kept (netem's
``apply_links`` keeps a proxy with the same upstream), and every remaining step runs again.
The same id under another region is refused (409), and so, forever, is a removed id. ``cluster.json`` records the metadata group's
membership under ``meta`` when the command finishes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

HELP = "run one node (geostore node --topology FILE --node ID --dir DIR)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=("add", "remove", "replace"),
        help="membership operation on a cluster (omit to run a node)",
    )
    parser.add_argument("--topology", help="topology TOML file (see regions/)")
    parser.add_argument("--node", help="this node's id (add: the new id; remove/replace: old)")
    parser.add_argument("--dir", help="this node's data directory")
    parser.add_argument("--cluster", help="add/remove/replace: the folder of cluster up")
    parser.add_argument("--region", help="add: the region to join")
    parser.add_argument(
        "--id",
        dest="new_id",
        help="add: the new node id (rerun with the same id and region to resume an add "
        "that was interrupted)",
    )
    parser.add_argument("--new-id", dest="replacement", help="replace: id of the new node")
    parser.add_argument("--timeout", type=float, default=120.0, help="membership: deadline")
    parser.add_argument(
        "--bootstrap",
        action="store_true",
        help="empty storage founds a new cluster with the topology's region as voters",
    )
    parser.add_argument(
        "--join",
        action="store_true",
        help="start with empty storage as a new member (added with node add), no bootstrap",
    )
    parser.add_argument("--config", default=None, help="config TOML file")
    parser.add_argument("--override", default=None, help="per-node config override TOML file")
    parser.add_argument("--port", type=int, default=None, help="port (default: the topology's)")
    parser.add_argument("--host", default=None, help="address to bind (default: the topology's)")
    parser.add_argument("--mode", default="multi-leader", choices=("multi-leader", "single-leader"))
    parser.add_argument(
        "--leader-region",
        default=None,
        help="single-leader mode: the region that should lead the global group "
        "(default: raft.leader_region, else the topology's first region)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the node's randomness")
    parser.add_argument(
        "--wan",
        default=None,
        help="wan.json of cluster up: the proxy through which this region reaches each node "
        "of the other regions (default: their direct addresses)",
    )
    parser.add_argument(
        "--certs",
        default=None,
        metavar="DIR",
        help="certificate directory of 'geostore certs init' (or cluster up): serve HTTPS, "
        "require node certificates on peer links, dial peers with mTLS",
    )
    parser.add_argument(
        "--tokens",
        default=None,
        metavar="FILE",
        help="token file (TOML of 'geostore certs token'): every client call needs a bearer "
        "token with the route's role (needs --certs)",
    )
    parser.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        help="UNSAFE negative control: acknowledge without fsync (fault tests only)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action is not None:
        return _membership(args)
    for flag in ("topology", "node", "dir"):
        if getattr(args, flag) is None:
            print(f"geostore node: --{flag} is required to run a node", file=sys.stderr)
            return 2
    import os

    from geostore.config import load_config, load_topology
    from geostore.ids import NodeId
    from geostore.runtime.logs import setup_logging
    from geostore.runtime.node import NodeRuntime

    topology = load_topology(args.topology)
    config = load_config(args.config, args.override)
    topology.node(args.node)  # ConfigError (exit 1) for an unknown node id
    os.makedirs(args.dir, exist_ok=True)
    setup_logging(args.dir, args.node)
    if args.unsafe_no_fsync:
        print(
            "geostore node: WARNING: --unsafe-no-fsync: acknowledged writes may be lost",
            file=sys.stderr,
        )

    tls = tokens = None
    if args.certs is not None:
        from geostore.transport.certs import load_node_tls

        tls = load_node_tls(args.certs, args.node, require_client_cert=False)
    if args.tokens is not None:
        from geostore.config.tokens import load_tokens

        tokens = load_tokens(args.tokens)
    if tls is None:
        print(
            "geostore node: WARNING: no --certs: plain HTTP, peers and clients unauthenticated",
            file=sys.stderr,
        )

    from geostore.runtime import gctune

    gctune.apply_thresholds(config.process)

    async def main() -> int:
        spec = topology.node(args.node)
        node = NodeRuntime(
            topology,
            NodeId(args.node),
            config,
            args.dir,
            port=args.port,
            host=args.host or spec.host or "127.0.0.1",
            mode=args.mode,
            unsafe_no_fsync=args.unsafe_no_fsync,
            seed=args.seed,
            bootstrap=args.bootstrap,
            join=args.join,
            wan_routes=args.wan,
            leader_region=args.leader_region,
            tls=tls,
            tokens=tokens,
        )
        await node.run(on_started=lambda: gctune.freeze_started(config.process))
        return node.exit_code

    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        return _profiled(main, os.path.join(profile_dir, f"{args.node}.prof"))
    return _run_loop(main)


#: Set to a directory, a node profiles its event loop thread with cProfile and writes
#: ``<dir>/<node>.prof`` (pstats format) when it exits: how the benchmarks find hot paths.
PROFILE_ENV = "GEOSTORE_PROFILE"
#: ``wall`` profiles wall time instead of the loop thread's CPU time.
PROFILE_CLOCK_ENV = "GEOSTORE_PROFILE_CLOCK"


def _run_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def _profiled(main: Callable[[], Coroutine[Any, Any, int]], path: str) -> int:
    import cProfile
    import os
    import time

    # CPU time of the loop thread by default: wall time would charge a socket write with
    # the time the woken peer process ran on this core (2-core machines).
    if os.environ.get(PROFILE_CLOCK_ENV, "cpu") == "wall":
        prof = cProfile.Profile()
    else:
        prof = cProfile.Profile(time.thread_time)
    prof.enable()
    try:
        return _run_loop(main)
    finally:
        prof.disable()
        prof.dump_stats(path)


# --- membership ------------------------------------------------------------------------------


def _post(url: str, body: dict[str, str], timeout_s: float = 30.0) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    from geostore.cli.cmd_cluster import _urlopen  # the cluster's CA and admin token

    try:
        with _urlopen(req, timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _retry_post(
    urls: list[str], path: str, body: dict[str, str], deadline: float, what: str
) -> dict[str, Any]:
    """POST to the first node that answers 200 (others forward to the leader); retry 503s."""
    import time

    from geostore.errors import ApiError, ErrorCode

    last: object = None
    while time.monotonic() < deadline:
        for url in urls:
            try:
                status, answer = _post(url + path, body)
            except OSError as exc:
                last = exc
                continue
            if status == 200:
                return answer
            err = answer.get("error")
            last = err.get("message", answer) if isinstance(err, dict) else answer
            if status not in (503, 504):
                raise ApiError(ErrorCode.UNAVAILABLE, f"{what} refused ({status}): {last}")
        time.sleep(0.5)
    raise ApiError(ErrorCode.WAIT_TIMEOUT, f"{what}: no success before the deadline ({last})")


def _membership(args: argparse.Namespace) -> int:
    import json
    import os
    import subprocess
    import time

    from geostore.cli.cmd_cluster import (
        WAN_FILE,
        _alive,
        _get_json,
        _load_cluster,
        _meta_members,
        _write_cluster,
    )
    from geostore.config import NodeSpec, RegionSpec, Topology, load_topology
    from geostore.errors import ApiError, ErrorCode
    from geostore.ids import NodeId

    if args.cluster is None:
        print(f"geostore node {args.action}: --cluster DIR is required", file=sys.stderr)
        return 2
    folder = os.path.abspath(args.cluster)
    cluster = _load_cluster(folder)
    deadline = time.monotonic() + args.timeout
    resolved_path = cluster["topology_resolved"]
    topology = load_topology(resolved_path)
    mode = cluster.get("mode", "multi-leader")
    # the nodes decide the same way whether they host the metadata group (runtime/node.py)
    with_meta = mode != "single-leader" and len(topology.regions) > 1

    def live_apis(region: str | None, *, without: str | None = None) -> list[str]:
        """Live nodes of ``region`` (None: of every region, the first region's first)."""
        regions = cluster["regions"]
        chosen = [region] if region is not None else list(regions)
        return [
            n["api"]
            for r in chosen
            for n in regions[r]["nodes"]
            if n["id"] != without and n.get("pid") and _alive(n["pid"])
        ]

    def proxies_for(new_id: str, grown: Topology) -> dict[str, str]:
        """WAN proxies through which the other regions reach ``new_id`` (with netem)."""
        if not cluster.get("netem"):
            return {}
        from netem.links import apply_links, plan_links

        plan = [link for link in plan_links(grown) if link.dst_node == new_id]
        scheme = "https" if cluster.get("tls") else "http"
        proxies = {}
        for link in apply_links(plan, cluster["netem"]):
            host, port = link.address
            proxies[str(link.plan.src_region)] = f"{scheme}://{host}:{port}"
        # nodes (re)started later read how their region reaches the new node here
        wan = os.path.join(folder, WAN_FILE)
        with open(wan, encoding="utf-8") as f:
            routes = json.load(f)
        routes.setdefault("via", {})[new_id] = proxies
        with open(wan + ".tmp", "w", encoding="utf-8") as f:
            json.dump(routes, f, indent=2)
        os.replace(wan + ".tmp", wan)
        return proxies

    def data_conf(region: str) -> tuple[set[str], set[str]]:
        """Voters and learners of the group ``region``'s nodes vote in, as any live node of
        it reports them (the union: a follower may lag behind the leader)."""
        voters: set[str] = set()
        learners: set[str] = set()
        while True:
            answered = False
            for url in live_apis(None if mode == "single-leader" else region):
                try:
                    st = _get_json(url + "/v1/status", 5.0) or {}
                except (OSError, ValueError):
                    continue
                answered = True
                for g in (st.get("groups") or {}).values():
                    if isinstance(g, dict):
                        voters.update(g.get("voters") or ())
                        learners.update(g.get("learners") or ())
            if answered:  # no answer must not pass for "not a voter" (--join)
                return voters, learners
            if time.monotonic() >= deadline:
                raise ApiError(
                    ErrorCode.WAIT_TIMEOUT,
                    f"no live node of {region} answered /v1/status before the deadline",
                )
            time.sleep(0.5)

    def storage_empty(group_dir: str) -> bool:
        """What the node itself checks at start (runtime/group.py): nothing ever written."""
        from geostore.raft.types import HardState
        from geostore.storage.files import open_storage

        raft_dir = os.path.join(group_dir, "raft")
        if not os.path.isdir(raft_dir):
            return True
        storage = open_storage(raft_dir)
        try:
            return (
                storage.log.last_index() == 0
                and storage.hard_state.load() == HardState()
                and storage.snapshots.latest() is None
            )
        finally:
            storage.close()

    def resume_entry(region: str, new_id: str) -> dict[str, Any] | None:
        """The cluster.json entry of an add of ``new_id`` to ``region`` to resume; None for
        an id never used; ApiError for one that may not be (re)used this way."""
        if new_id in cluster.get("removed", []):
            raise ApiError(
                ErrorCode.CONFLICT,
                f"node id {new_id!r} was removed from this cluster (ids are never reused)",
            )
        spec = next((n for n in topology.nodes() if n.id == new_id), None)
        if spec is None:
            return None
        if spec.region != region:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"node id {new_id!r} is taken by region {spec.region} (ids are never reused); "
                f"rerun with --region {spec.region} to resume its add",
            )
        entry = next((n for n in cluster["regions"][region]["nodes"] if n["id"] == new_id), None)
        if entry is None:  # stopped between writing the topology and cluster.json
            scheme = "https" if cluster.get("tls") else "http"
            entry = {"id": new_id, "api": f"{scheme}://127.0.0.1:{spec.port}", "pid": None,
                     "dir": os.path.join(folder, "nodes", new_id), "proxies": {}, "cmd": None,
                     "added": True}  # fmt: skip
            cluster["regions"][region]["nodes"].append(entry)
        if not entry.get("added"):  # a founding member: nothing to resume
            raise ApiError(
                ErrorCode.CONFLICT, f"node id {new_id!r} is taken (ids are never reused)"
            )
        return entry

    def add(region: str, new_id: str) -> None:
        from geostore.cli.cmd_cluster import _free_port

        entry = resume_entry(region, new_id)  # first: a taken id names its region
        if region not in topology.region_names():
            raise ApiError(
                ErrorCode.MALFORMED,
                f"no region {region!r} in this cluster ({', '.join(topology.region_names())})",
            )
        done: list[str] = []
        if entry is None:
            port = _free_port()
            regions = []
            for r in topology.regions:
                nodes = r.nodes
                if r.name == region:
                    nodes = (*nodes, NodeSpec(NodeId(new_id), r.name, "127.0.0.1", port))
                regions.append(RegionSpec(r.name, nodes, r.intra_rtt_ms))
            grown = Topology(
                topology.name, topology.path, tuple(regions), topology.links, topology.streams
            )
            with open(resolved_path + ".tmp", "w", encoding="utf-8") as f:
                f.write(grown.to_toml())
            os.replace(resolved_path + ".tmp", resolved_path)
            scheme = "https" if cluster.get("tls") else "http"
            entry = {"id": new_id, "api": f"{scheme}://127.0.0.1:{port}", "pid": None,
                     "dir": os.path.join(folder, "nodes", new_id), "proxies": {}, "cmd": None,
                     "added": True}  # fmt: skip
            # recorded once its process runs (a pid); a rerun in between finds the topology
            cluster["regions"][region]["nodes"].append(entry)
        else:
            grown = topology
            done.append("topology")
            print(f"resuming the add of {new_id} to {region} (already in the topology)")
        api = str(entry["api"])
        node_dir = str(entry["dir"])
        os.makedirs(node_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "geostore", "node", "--topology", resolved_path,
               "--node", new_id, "--dir", node_dir, "--mode", mode]  # fmt: skip
        if mode == "single-leader" and cluster.get("leader_region"):
            cmd += ["--leader-region", cluster["leader_region"]]
        if cluster.get("tls"):  # the new node gets a certificate from the cluster CA
            from geostore.cli.cmd_cluster import CERTS_DIR, TOKENS_FILE
            from geostore.transport.certs import ensure_certs

            ensure_certs(grown, os.path.join(folder, CERTS_DIR))
            cmd += ["--certs", os.path.join(folder, CERTS_DIR)]
            cmd += ["--tokens", os.path.join(folder, cluster.get("tokens") or TOKENS_FILE)]
        if cluster.get("config"):
            cmd += ["--config", cluster["config"]]
        wan = os.path.join(folder, WAN_FILE)
        if os.path.exists(wan):  # it reaches the other regions through their proxies too
            cmd += ["--wan", wan]
        # a restart ('cluster start') must not pass --join: a wiped disk stays refused
        entry["cmd"] = cmd
        if entry.get("pid") is not None and _alive(entry["pid"]):
            done.append(f"process (pid {entry['pid']})")
        else:
            join = ["--join"]
            # a voter may have voted or acknowledged entries: with an empty data group it
            # must not come back under its id; one that never became a voter may (a learner
            # counts in no quorum), and so may an empty metadata replica of a voter that is
            # no metadata member yet (--join lets exactly the empty groups start)
            if entry.get("joined") or new_id in data_conf(region)[0]:
                gid = "data-global" if mode == "single-leader" else f"data-{region}"
                if storage_empty(os.path.join(node_dir, "groups", gid)):
                    raise ApiError(
                        ErrorCode.CONFLICT,
                        f"{new_id} is a voter of {gid} but its storage in {node_dir} is empty "
                        "(wiped?): it must not come back under its old id; use "
                        f"'geostore node replace --node {new_id}'",
                    )
                if entry.get("joined"):
                    join = []  # it completed joining: restarts as 'cluster start' does
            with open(os.path.join(node_dir, "process.log"), "ab") as out:
                proc = subprocess.Popen([*cmd, *join], stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            entry["pid"] = proc.pid
            _write_cluster(folder, cluster)
            print(f"started {new_id} (pid {proc.pid}{', --join' if join else ''}) at {api}")
        proxies: dict[str, str] = dict(entry.get("proxies") or {})
        wanted = {r for r in grown.region_names() if r != region}
        if cluster.get("netem") and not wanted <= proxies.keys():
            # apply_links keeps a proxy that exists with the same upstream (a resumed add)
            proxies = proxies_for(new_id, grown)
            entry["proxies"] = proxies
            _write_cluster(folder, cluster)
        elif cluster.get("netem"):
            done.append("WAN proxies")
        # every node learns its address: its region's for the data group, the others' for
        # the metadata group (and single-leader's global group), through their WAN proxy
        # (idempotent: a known node with the same region keeps it, with the new url)
        for r_name, info in cluster["regions"].items():
            for n in info["nodes"]:
                if n["id"] == new_id or not _alive(n["pid"]):
                    continue
                url = api if r_name == region else proxies.get(r_name, api)
                # url: how that node's region reaches it; api: where a client goes (the
                # address a 421 wrong_region answer lists, as cluster.json does)
                _retry_post([n["api"]], "/v1/admin/peers",
                            {"node": new_id, "url": url, "region": region, "api": api},
                            deadline, f"telling {n['id']} about {new_id}")  # fmt: skip
        members = live_apis(region, without=new_id)
        answer = _retry_post(members, "/v1/admin/members", {"op": "add_learner", "node": new_id},
                             deadline, f"adding {new_id} as a learner")  # fmt: skip
        if answer.get("already"):
            done.append("learner")
        print(f"{new_id} is a learner; waiting until it has caught up")
        answer = _retry_post(members, "/v1/admin/members", {"op": "promote", "node": new_id},
                             deadline, f"promoting {new_id}")  # fmt: skip
        if answer.get("already"):
            done.append("voter")
        print(f"{new_id} is a voter")
        if with_meta:
            meta = _meta_members(cluster) or {}
            if new_id in (meta.get("voters") or ()) or new_id in (meta.get("learners") or ()):
                done.append("metadata member")
            answer = _retry_post(
                [*members, *live_apis(None, without=new_id)],
                "/v1/admin/meta/members",
                {"op": "add_learner", "node": new_id, "region": region},
                deadline,
                f"adding {new_id} to the metadata group",
            )
            commit = int(str(answer.get("commit", 0)))
            print(f"{new_id} is a learner of the metadata group; waiting until it applied "
                  f"index {commit}")  # fmt: skip
            applied = -1
            while time.monotonic() < deadline:
                try:
                    st = _get_json(api + "/v1/status", 5.0)
                except (OSError, ValueError):
                    st = None
                applied = int(((st or {}).get("meta") or {}).get("applied", -1))
                if applied >= commit:
                    break
                time.sleep(0.2)
            else:
                raise ApiError(
                    ErrorCode.WAIT_TIMEOUT,
                    f"{new_id} applied the metadata group up to {applied}, not {commit}, "
                    "before the deadline (it is a learner and keeps catching up)",
                )
            print(f"{new_id} holds the metadata (applied {applied})")
        entry["joined"] = True  # from now on it restarts without --join
        _write_cluster(folder, cluster)
        if done:
            print(f"{new_id}: already done before this run: {', '.join(done)}")

    def remove(region: str, node_id: str) -> None:
        others = live_apis(region, without=node_id)
        if with_meta:  # first: a metadata voter hands its region's vote to a learner
            answer = _retry_post(
                [*others, *live_apis(None, without=node_id)],
                "/v1/admin/meta/members",
                {"op": "remove", "node": node_id},
                deadline,
                f"removing {node_id} from the metadata group",
            )
            print(f"{node_id} left the metadata group; voters now {answer.get('voters')}, "
                  f"learners {answer.get('learners')}")  # fmt: skip
        answer = _retry_post(others, "/v1/admin/members", {"op": "remove", "node": node_id},
                             deadline, f"removing {node_id}")  # fmt: skip
        print(f"{node_id} removed; voters now {answer.get('voters')}")
        entry = next(n for n in cluster["regions"][region]["nodes"] if n["id"] == node_id)
        if _alive(entry["pid"]):
            import signal

            os.kill(entry["pid"], signal.SIGTERM)
            while _alive(entry["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
        cluster["regions"][region]["nodes"].remove(entry)
        cluster.setdefault("removed", []).append(node_id)
        _write_cluster(folder, cluster)

    def region_of(node_id: str) -> str:
        for region, info in cluster["regions"].items():
            if any(n["id"] == node_id for n in info["nodes"]):
                return str(region)
        raise ApiError(ErrorCode.MALFORMED, f"{node_id!r} is not a node of {folder}")

    if args.action == "add":
        if not args.region or not args.new_id:
            print("geostore node add: --region and --id are required", file=sys.stderr)
            return 2
        add(args.region, args.new_id)
    elif args.action == "remove":
        if not args.node:
            print("geostore node remove: --node is required", file=sys.stderr)
            return 2
        remove(region_of(args.node), args.node)
    else:
        if not args.node:
            print("geostore node replace: --node is required", file=sys.stderr)
            return 2
        region = region_of(args.node)
        taken = {n.id for n in topology.nodes()}
        new_id = args.replacement or next(
            f"{args.node}-r{k}" for k in range(1, 1000) if f"{args.node}-r{k}" not in taken
        )
        add(region, new_id)
        topology = load_topology(resolved_path)
        remove(region, args.node)
    for region, info in cluster["regions"].items():
        for n in info["nodes"]:
            st = _get_json(n["api"] + "/v1/status") if _alive(n["pid"]) else None
            g: dict[str, object] = next(iter((st or {}).get("groups", {}).values()), {})
            print(f"  {region} {n['id']}: {g.get('role', 'down')} voters={g.get('voters')}")
    if with_meta:
        meta = _meta_members(cluster)
        if meta is not None:
            cluster["meta"] = meta
            _write_cluster(folder, cluster)
            print(f"  metadata group: leader {meta['leader']}, voters {meta['voters']}, "
                  f"learners {meta['learners']}")  # fmt: skip
    return 0
