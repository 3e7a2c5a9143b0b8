"""The driver room: what runs the stages. The one stage list (`run.STAGES`), DVC and the dataset's
versions (`versioning`), the hand-off between workers that share no disk (`handoff`), and rebuilding
a registered version from its commit (`reproduce`). It imports stages, never the loop."""
