"""The limits, as pure logic: sliding-window slots with leases and a fair line, the circuit
breaker, the clock."""
