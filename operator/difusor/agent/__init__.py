"""The agent: runs beside nginx and sshd in every web pod; ingests, stages and swaps cuts."""
