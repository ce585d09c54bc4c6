"""Runs scripted Raft scenarios: text files of commands, each followed by its expected output.

File format (one scenario per file, under tests/scenarios/raft/)::

    # a comment, kept verbatim
    > nodes 3                  a command line starts with "> "
    > status
    1 leader t1 ...            the lines after a command are its expected output

Commands (node ids are small integers):

``nodes N [learners A,B] [seed S] [prevote on|off] [checkquorum on|off] [election T]
[heartbeat T] [maxents N] [maxbytes N] [inflight N] [chunk N] [unsafe NAME]``
    create a group of voters 1..N (plus learners) with those settings
``add-node N``               a fresh node with empty state, not yet a member
``campaign N`` / ``tick N [K]`` / ``tick-all [K]`` (ticks every live node, then stabilizes)
``propose N DATA`` / ``propose-batch N K PREFIX``   print Proposed or Rejected
``conf N add-voter|add-learner|remove|promote M`` / ``transfer N M`` / ``read N CTX``
``process [N...]``           run host loops (messages go to the network queue)
``deliver [A->B] [max K]``   process every node, then deliver queued messages, printing them
``drop [A->B]``              process every node, then drop queued messages
``partition 1 2 | 3``, ``cut A B`` (both ways), ``cut A -> B`` (one way), ``heal``
``crash N`` / ``restart N`` / ``wipe N`` (restart with no durable state, flagged wiped)
``compact N``                N snapshots its state machine at its applied index
``stabilize``                process and deliver until nothing moves (prints nothing)
``status [N...]`` / ``log N`` (after a host-loop step) / ``disk N`` (store as is) / ``progress N`` / ``applied N`` / ``reads N`` / ``queue``
``expect N FIELD OP VALUE``  a hard assertion (role, term, vote, leader, commit, applied,
                             last, first, state-of-M): fails the test even when rewriting
``expect-agree``             every live node's applied log is a prefix of the longest
``state N`` / ``expect-once N ITEM``  the (client, seq)-deduplicating state machine

After every host-loop step the harness checks election safety, state-machine safety,
index sanity and term/vote durability (:meth:`Cluster.check`); a violation fails the run.
Set ``GEOSTORE_REWRITE=1`` to rewrite the expected output in place for review.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from geostore.ids import NodeId
from geostore.raft.core import ConfChange, ConfChangeOp, Proposed, RaftConfig, Rejected
from geostore.raft.types import EntryKind, SnapshotMeta
from tests.scenarios.harness import GROUP as GROUP_ID
from tests.scenarios.harness import Cluster, Node, _ent, describe, encode_sm, nid

REWRITE_ENV = "GEOSTORE_REWRITE"


class ScenarioError(AssertionError):
    """A scenario's command failed, an expectation failed, or output differed."""


@dataclass
class Step:
    line_no: int
    command: str
    expected: list[str] = field(default_factory=list)
    #: comment/blank lines that follow the output, kept verbatim on rewrite
    trailer: list[str] = field(default_factory=list)


@dataclass
class Script:
    header: list[str]
    steps: list[Step]


def parse(text: str) -> Script:
    header: list[str] = []
    steps: list[Step] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line.startswith("> "):
            steps.append(Step(no, line[2:].strip()))
        elif not steps:
            header.append(line)
        elif line == "" or line.startswith("#"):
            steps[-1].trailer.append(line)
        else:
            if steps[-1].trailer:
                raise ScenarioError(f"line {no}: output after a comment or blank line")
            steps[-1].expected.append(line)
    return Script(header, steps)


def render(script: Script, outputs: list[list[str]]) -> str:
    lines = list(script.header)
    for step, out in zip(script.steps, outputs, strict=True):
        lines.append(f"> {step.command}")
        lines.extend(out)
        lines.extend(step.trailer)
    return "\n".join(lines).rstrip("\n") + "\n"


_UNSAFE = {
    "commit-without-quorum": "unsafe_commit_without_quorum",
    "ignore-figure8": "unsafe_ignore_figure8",
    "count-learner-votes": "unsafe_count_learner_votes",
    "forget-vote": "unsafe_forget_vote",
}


class Interpreter:
    def __init__(self) -> None:
        self.cluster: Cluster | None = None

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None, "no 'nodes' command yet"
        return self.cluster

    def node(self, token: str) -> Node:
        return self.c.nodes[nid(token)]

    def run(self, command: str) -> list[str]:
        args = shlex.split(command)
        name, rest = args[0], args[1:]
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScenarioError(f"unknown command {name!r}")
        out: list[str] = handler(rest)
        return out

    # -- setup ---------------------------------------------------------------------------
    def cmd_nodes(self, a: list[str]) -> list[str]:
        count = int(a[0])
        opts = dict(zip(a[1::2], a[2::2], strict=True))
        learners = [nid(x) for x in opts.get("learners", "").split(",") if x]
        kw: dict[str, object] = {}
        for key, param in (
            ("election", "election_ticks"),
            ("heartbeat", "heartbeat_ticks"),
            ("maxents", "max_entries_per_msg"),
            ("maxbytes", "max_bytes_per_msg"),
            ("inflight", "max_inflight_msgs"),
            ("chunk", "snapshot_chunk_bytes"),
            ("maxuncommitted", "max_uncommitted_entries"),
        ):
            if key in opts:
                kw[param] = int(opts[key])
        if "prevote" in opts:
            kw["pre_vote"] = opts["prevote"] == "on"
        if "checkquorum" in opts:
            kw["check_quorum"] = opts["checkquorum"] == "on"
        if "unsafe" in opts:
            kw[_UNSAFE[opts["unsafe"]]] = True
        voters = [nid(i) for i in range(1, count + 1)]

        def make(n: NodeId) -> RaftConfig:
            return RaftConfig(node_id=n, group=GROUP_ID, **kw)  # type: ignore[arg-type]

        self.cluster = Cluster(
            voters + learners,
            seed=int(opts.get("seed", "0")),
            config=make,
            voters=voters,
            learners=learners,
        )
        return []

    def cmd_add_node(self, a: list[str]) -> list[str]:
        # a joining node starts from the group's bootstrap configuration and replays the log
        self.c.add_node(nid(a[0]), self.c.boot_conf)
        return []

    # -- inputs --------------------------------------------------------------------------
    def cmd_campaign(self, a: list[str]) -> list[str]:
        self.node(a[0]).c.campaign()
        return []

    def cmd_tick(self, a: list[str]) -> list[str]:
        self.c.tick(nid(a[0]), int(a[1]) if len(a) > 1 else 1)
        return []

    def cmd_tick_all(self, a: list[str]) -> list[str]:
        self.c.tick_all(int(a[0]) if a else 1)
        return []

    def cmd_propose(self, a: list[str]) -> list[str]:
        return [_result(self.node(a[0]).c.propose(a[1].encode()))]

    def cmd_propose_batch(self, a: list[str]) -> list[str]:
        k, prefix = int(a[1]), a[2]
        datas = [f"{prefix}{i}".encode() for i in range(k)]
        return [_result(self.node(a[0]).c.propose_batch(datas))]

    def cmd_conf(self, a: list[str]) -> list[str]:
        op = {
            "add-voter": ConfChangeOp.ADD_VOTER,
            "add-learner": ConfChangeOp.ADD_LEARNER,
            "remove": ConfChangeOp.REMOVE,
            "promote": ConfChangeOp.PROMOTE,
        }[a[1]]
        return [_result(self.node(a[0]).c.propose_conf_change(ConfChange(op, nid(a[2]))))]

    def cmd_transfer(self, a: list[str]) -> list[str]:
        res = self.node(a[0]).c.transfer_leadership(nid(a[1]))
        return [_result(res) if res is not None else "accepted"]

    def cmd_read(self, a: list[str]) -> list[str]:
        res = self.node(a[0]).c.read_index(a[1].encode())
        return [_result(res) if res is not None else "read pending"]

    # -- network -------------------------------------------------------------------------
    def _process_all(self) -> None:
        for n in sorted(self.c.nodes):
            self.c.process(n)

    def cmd_process(self, a: list[str]) -> list[str]:
        for n in a or sorted(self.c.nodes):
            self.c.process(nid(n))
        return []

    def _link(self, a: list[str]) -> tuple[NodeId | None, NodeId | None, list[str]]:
        if a and "->" in a[0]:
            s, d = a[0].split("->")
            return (nid(s) if s else None), (nid(d) if d else None), a[1:]
        return None, None, a

    def cmd_deliver(self, a: list[str]) -> list[str]:
        self._process_all()
        src, dst, rest = self._link(a)
        count = int(rest[1]) if len(rest) >= 2 and rest[0] == "max" else None
        return [describe(m) for m in self.c.deliver(src, dst, count=count)]

    def cmd_drop(self, a: list[str]) -> list[str]:
        self._process_all()
        src, dst, _ = self._link(a)
        return [f"dropped {self.c.drop(src, dst)}"]

    def cmd_hold(self, a: list[str]) -> list[str]:
        rd = self.c.hold(nid(a[0]))
        if rd is None:
            return ["nothing ready"]
        return [f"held entries={len(rd.entries)} messages={len(rd.messages)}"]

    def cmd_release(self, a: list[str]) -> list[str]:
        self.c.release(nid(a[0]))
        return []

    def cmd_duplicate(self, a: list[str]) -> list[str]:
        self._process_all()
        src, dst, _ = self._link(a)
        return [f"duplicated {self.c.duplicate(src, dst)}"]

    def cmd_reorder(self, a: list[str]) -> list[str]:
        self._process_all()
        src, dst, _ = self._link(a)
        self.c.reorder(src, dst)
        return []

    def _dedup(self, node: Node) -> tuple[list[str], int]:
        items = _sm_items(node)
        seen: dict[str, int] = {}
        kept: list[str] = []
        dups = 0
        for it in items:
            parts = it.split("/")
            if len(parts) == 3 and parts[1].isdigit():
                if seen.get(parts[0], 0) >= int(parts[1]):
                    dups += 1
                    continue
                seen[parts[0]] = int(parts[1])
            kept.append(it)
        return kept, dups

    def cmd_state(self, a: list[str]) -> list[str]:
        """The deduplicating state machine: "client/seq/x" applies once per (client, seq)."""
        kept, dups = self._dedup(self.node(a[0]))
        return [f"state [{' '.join(kept)}] duplicates-skipped={dups}"]

    def cmd_expect_once(self, a: list[str]) -> list[str]:
        """``expect-once N ITEM``: the deduplicated state of N holds ITEM exactly once."""
        kept, _ = self._dedup(self.node(a[0]))
        if kept.count(a[1]) != 1:
            raise ScenarioError(f"expect-once {a[1]}: found {kept.count(a[1])} times in {kept}")
        return []

    def cmd_queue(self, a: list[str]) -> list[str]:
        return [describe(m) for m in self.c.queue]

    def cmd_partition(self, a: list[str]) -> list[str]:
        groups: list[list[NodeId]] = [[]]
        for tok in a:
            if tok == "|":
                groups.append([])
            else:
                groups[-1].append(nid(tok))
        self.c.partition(*groups)
        return []

    def cmd_cut(self, a: list[str]) -> list[str]:
        if len(a) == 3 and a[1] == "->":
            self.c.cut(nid(a[0]), nid(a[2]), both=False)
        else:
            self.c.cut(nid(a[0]), nid(a[1]))
        return []

    def cmd_heal(self, a: list[str]) -> list[str]:
        self.c.heal()
        return []

    def cmd_crash(self, a: list[str]) -> list[str]:
        self.c.crash(nid(a[0]))
        return []

    def cmd_restart(self, a: list[str]) -> list[str]:
        self.c.restart(nid(a[0]))
        return []

    def cmd_wipe(self, a: list[str]) -> list[str]:
        self.c.wipe(nid(a[0]))
        return []

    def cmd_stabilize(self, a: list[str]) -> list[str]:
        self.c.stabilize()
        return []

    def cmd_compact(self, a: list[str]) -> list[str]:
        node = self.node(a[0])
        st = node.c.status()
        idx = node.applied_index()
        if idx <= node.snap_meta.index:
            return ["nothing to compact"]
        term = node.store.term_at(idx)
        assert term is not None
        meta = SnapshotMeta(index=idx, term=term, conf=st.conf)
        node.snap_data = encode_sm(node.applied, node.snap_data)
        node.snap_meta = meta
        node.applied = []
        node.c.snapshot_taken(meta)
        self.c.process(node.id)
        return [f"snapshot {meta.index}/{meta.term} first={node.store.first_index()}"]

    # -- observation ---------------------------------------------------------------------
    def cmd_status(self, a: list[str]) -> list[str]:
        out = []
        for n in [nid(x) for x in a] or sorted(self.c.nodes, key=_order):
            node = self.c.nodes[n]
            if node.core is None:
                out.append(f"{n} down")
                continue
            s = node.c.status()
            voters = ",".join(sorted(s.conf.voters, key=_order))
            learners = ",".join(sorted(s.conf.learners, key=_order))
            out.append(
                f"{n} {s.role.value} t{s.term} vote={s.vote or '-'} lead={s.leader or '-'} "
                f"commit={s.commit} applied={s.applied} last={s.last_index} "
                f"voters={voters}" + (f" learners={learners}" if learners else "")
            )
        return out

    def cmd_log(self, a: list[str]) -> list[str]:
        self.c.process(nid(a[0]))  # show what the node holds after persisting its Ready
        return self.cmd_disk(a)

    def cmd_disk(self, a: list[str]) -> list[str]:
        """What n's log store holds right now (no host-loop step first)."""
        node = self.node(a[0])
        store = node.store
        snap = store.snapshot_meta()
        ents = store.entries(store.first_index(), store.last_index() + 1)
        body = " ".join(_ent(e) for e in ents)
        head = f"snap={snap.index}/{snap.term} " if snap.index else ""
        return [f"{head}[{body}]"]

    def cmd_applied(self, a: list[str]) -> list[str]:
        node = self.node(a[0])
        items = _sm_items(node)
        head = f"snap={node.snap_meta.index} " if node.snap_meta.index else ""
        return [f"{head}applied={node.applied_index()} [{' '.join(items)}]"]

    def cmd_reads(self, a: list[str]) -> list[str]:
        self.c.process(nid(a[0]))
        node = self.node(a[0])
        return [f"read {ctx.decode()} at {idx}" for ctx, idx in node.read_states] or ["none"]

    def cmd_progress(self, a: list[str]) -> list[str]:
        s = self.node(a[0]).c.status()
        return [
            f"{n}: {p.state.value} match={p.match} next={p.next} inflight={p.inflight}"
            for n, p in sorted(s.progress.items(), key=lambda kv: _order(kv[0]))
        ]

    def cmd_expect(self, a: list[str]) -> list[str]:
        node, what, op, want = self.node(a[0]), a[1], a[2], a[3]
        s = node.c.status()
        got: object
        if what.startswith("state-of-"):
            got = s.progress[nid(what[len("state-of-") :])].state.value
        else:
            got = {
                "role": s.role.value,
                "term": s.term,
                "vote": s.vote or "-",
                "leader": s.leader or "-",
                "commit": s.commit,
                "applied": s.applied,
                "last": s.last_index,
                "first": s.first_index,
            }[what]
        value: object = int(want) if isinstance(got, int) else want
        ok = {
            "==": got == value,
            "!=": got != value,
            ">=": isinstance(got, int) and isinstance(value, int) and got >= value,
            "<=": isinstance(got, int) and isinstance(value, int) and got <= value,
            ">": isinstance(got, int) and isinstance(value, int) and got > value,
            "<": isinstance(got, int) and isinstance(value, int) and got < value,
        }[op]
        if not ok:
            raise ScenarioError(f"expect {' '.join(a)}: got {got!r}")
        return []

    def cmd_expect_agree(self, a: list[str]) -> list[str]:
        logs = []
        for node in self.c.nodes.values():
            if node.core is not None:
                base = node.snap_meta.index
                logs.append({base + k + 1: (e.term, e.data) for k, e in enumerate(node.applied)})
        for x in logs:
            for y in logs:
                for idx in x.keys() & y.keys():
                    if x[idx] != y[idx]:
                        raise ScenarioError(f"applied logs differ at {idx}")
        return []


def _sm_items(node: Node) -> list[str]:
    """The state machine's content: what the snapshot holds, then what was applied since."""
    base = node.snap_data.decode().split("\n") if node.snap_data else []
    return base + [e.data.decode() for e in node.applied if e.kind is EntryKind.NORMAL]


def _order(n: str) -> tuple[int, str]:
    return (int(n), n) if n.isdigit() else (1 << 30, n)


def _result(res: Proposed | Rejected) -> str:
    if isinstance(res, Proposed):
        if res.last_index != res.index:
            return f"proposed {res.index}..{res.last_index}/{res.term}"
        return f"proposed {res.index}/{res.term}"
    return f"rejected {res.reason.value} leader={res.leader_hint or '-'}"


def run_file(path: Path) -> tuple[bool, str]:
    """Run one scenario; (matched, actual text). Rewrites the file when asked to."""
    text = path.read_text()
    script = parse(text)
    interp = Interpreter()
    outputs: list[list[str]] = []
    for step in script.steps:
        try:
            outputs.append(interp.run(step.command))
        except ScenarioError as exc:
            raise ScenarioError(f"{path.name}:{step.line_no}: {step.command}: {exc}") from exc
        except AssertionError as exc:
            raise ScenarioError(
                f"{path.name}:{step.line_no}: {step.command}: {type(exc).__name__}: {exc}"
            ) from exc
    actual = render(script, outputs)
    if os.environ.get(REWRITE_ENV) == "1" and actual != text:
        path.write_text(actual)
        return True, actual
    return actual == text, actual
