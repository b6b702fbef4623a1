"""Entry points: `python -m jobs.<name>` here; `ray job submit -- python -m jobs.<name>` on Ray."""
