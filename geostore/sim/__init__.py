"""geostore.sim: the deterministic simulator and its invariant checkers.

- :mod:`~geostore.sim.simulation`: one seeded run (``Simulation``, ``run_seed``, ``SeedSpec``);
- :mod:`~geostore.sim.runner`: many seeds in parallel processes, the CI seed set;
- :mod:`~geostore.sim.checker`, :mod:`~geostore.sim.history`: online Raft invariants over
  ghost state, and client-history anomalies;
- :mod:`~geostore.sim.faults`, :mod:`~geostore.sim.network`: swarm fault plans, the network;
- :mod:`~geostore.sim.coverage`: coverage counters of faults and rare paths;
- :mod:`~geostore.sim.geo`, :mod:`~geostore.sim.failover`: the geo core over a WAN, and
  region loss, failover, failback with quarantine and planned moves over the real store.

Never imports asyncio or aiohttp (``geostore sim`` runs without them).
"""
