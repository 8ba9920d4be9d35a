//! Analysis of partition functions over a sample of the existing keys.
