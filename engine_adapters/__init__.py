"""Everything that touches a model: the engine Protocol and its implementations."""
