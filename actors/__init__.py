"""Ray actors and Ray Train/Tune loops: thin wrappers that distribute the core library."""
