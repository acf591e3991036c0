"""Pure logic over plain data: decisions, detection and arithmetic with no I/O, clock or env."""
