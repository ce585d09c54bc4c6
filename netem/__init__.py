"""netem: a Toxiproxy-compatible WAN emulator (asyncio TCP proxy + HTTP control API)."""
