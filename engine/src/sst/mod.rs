//! Sorted string tables: immutable, checksummed, self-describing files of internal entries.

pub mod block;
pub mod bloom;
pub mod codec;
pub(crate) mod files;
pub mod format;
pub mod reader;
pub mod writer;

pub use format::{Compression, TableKind, TableProps};
pub use reader::{Table, TableIter};
pub use writer::{TableOptions, TableOwner, TableWriter};

#[cfg(test)]
pub(crate) mod tests;
