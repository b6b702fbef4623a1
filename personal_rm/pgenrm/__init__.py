"""P-GenRM (arXiv 2602.12116): a judge writes a personalized evaluation chain per user and
request; users are clustered into prototypes; dual-granularity test-time scaling mixes N chains
of the user with chains of M similar users.

One module per idea: `chain` (the schema), `prompt` and `parser` (what an LLM judge reads and
writes), `llm_judge` and `rubric` (the two judges), `prototypes`, `scaling`, `chain_data` (the
teacher's chains, the PSI stage) and `training` (SFT and GRPO, the CRE stage).
"""
