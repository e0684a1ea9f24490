"""How fast things run: the benchmark command and the CPU process settings that its figures justified.
Imports every other folder; nothing imports it but the CLI."""

