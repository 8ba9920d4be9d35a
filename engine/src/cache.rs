//! The block cache: decompressed data blocks, bounded by their total size.
//!
//! Uncompressed blocks are served straight from the table's memory map and never enter the
//! cache; the page cache already holds them.

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::sst::block::Block;

#[derive(Clone)]
struct BlockWeighter;

impl Weighter<(u64, u32), Block> for BlockWeighter {
    fn weight(&self, _key: &(u64, u32), block: &Block) -> u64 {
        block.size() as u64 + 64
    }
}

pub struct BlockCache {
    cache: Cache<(u64, u32), Block, BlockWeighter>,
    capacity: u64,
}

impl BlockCache {
    /// A cache holding up to `bytes` of blocks.
    pub fn new(bytes: u64) -> BlockCache {
        let items = (bytes / 4096).max(16) as usize;
        BlockCache {
            cache: Cache::with_weighter(items, bytes.max(1), BlockWeighter),
            capacity: bytes,
        }
    }

    pub fn get(&self, table: u64, block: u32) -> Option<Block> {
        self.cache.get(&(table, block))
    }

    pub fn insert(&self, table: u64, block: u32, b: Block) {
        if self.capacity > 0 {
            self.cache.insert((table, block), b);
        }
    }

    /// Bytes currently held.
    pub fn used(&self) -> u64 {
        self.cache.weight()
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}
