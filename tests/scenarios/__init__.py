"""Scripted Raft scenarios and the tiny in-test host that runs them."""
