//! Read-only inspection of a database directory for the `sluice` tool: the same readers
//! the engine uses, no second parser.
