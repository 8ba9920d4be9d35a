//! The block cache: decompressed data blocks, bounded by their total size.
//!
//! Blocks are read out of the tables' memory maps. Pages a map touches stay resident in
//! the process until released, so the cache also keeps a budget of bytes read from maps:
//! past it, a sweep (run off the read path) releases every map's pages. Resident memory is
//! then about the cache's size plus the budget, however large the database.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::fs::MappedPages;

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
    maps: Mutex<Vec<Weak<MappedPages>>>,
    touched: AtomicU64,
    sweep_due: AtomicBool,
}

/// Bytes read out of memory maps between sweeps.
const MAP_BUDGET: u64 = 2 << 20;

impl BlockCache {
    /// A cache holding up to `bytes` of blocks.
    pub fn new(bytes: u64) -> BlockCache {
        // A sizing hint for the cache's tables; a huge budget must not size them for
        // trillions of blocks.
        let items = (bytes / 4096).clamp(16, 1 << 24) as usize;
        BlockCache {
            cache: Cache::with_weighter(items, bytes.max(1), BlockWeighter),
            capacity: bytes,
            maps: Mutex::new(Vec::new()),
            touched: AtomicU64::new(0),
            sweep_due: AtomicBool::new(false),
        }
    }

    /// Registers a table's map for sweeps.
    pub fn track(&self, pages: &Arc<MappedPages>) {
        let mut m = self.maps.lock();
        if m.len() > 64 && m.len().is_power_of_two() {
            m.retain(|w| w.strong_count() > 0);
        }
        m.push(Arc::downgrade(pages));
    }

    /// Counts bytes read out of a map; marks a sweep due past the budget.
    #[inline]
    pub fn touched(&self, bytes: u64) {
        if self.touched.fetch_add(bytes, Ordering::Relaxed) + bytes > MAP_BUDGET {
            self.sweep_due.store(true, Ordering::Relaxed);
        }
    }

    /// Releases every live map's resident pages if a sweep is due. Returns whether it ran.
    pub fn sweep_if_due(&self) -> bool {
        if !self.sweep_due.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.touched.store(0, Ordering::Relaxed);
        let live: Vec<Arc<MappedPages>> = {
            let mut m = self.maps.lock();
            m.retain(|w| w.strong_count() > 0);
            m.iter().filter_map(|w| w.upgrade()).collect()
        };
        for p in live {
            p.release();
        }
        true
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

    /// The room blocks may take now (see [`set_room`](Self::set_room)).
    pub fn room(&self) -> u64 {
        self.cache.capacity()
    }

    /// Shrinks (or restores) the room blocks may take, within the configured capacity.
    pub fn set_room(&self, bytes: u64) {
        if self.capacity > 0 {
            self.cache.set_capacity(bytes.clamp(1, self.capacity));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fs::{Fs, StdFs};

    /// Resident KiB of this process's mappings of `path` (from /proc/self/smaps).
    pub(crate) fn resident_kib(path: &std::path::Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let name = path.to_str().unwrap();
        let mut total = 0;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some(rest) = line.strip_prefix("Rss:") {
                if inside {
                    total += rest
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap();
                }
            } else if line.contains('-') && line.split_whitespace().count() >= 5 {
                // A mapping's header line: "start-end perms offset dev inode [path]".
                inside = line.ends_with(name);
            }
        }
        total
    }

    /// Pages read out of maps are released once more than the budget was read: resident
    /// memory stays about the cache plus the budget however much is read through maps.
    #[test]
    fn reading_past_the_map_budget_releases_mapped_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.sst");
        let len = 4 * MAP_BUDGET as usize;
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let m = StdFs.map_file(&path).unwrap();
        let cache = BlockCache::new(1 << 20);
        cache.track(m.pages.as_ref().unwrap());
        let read = |from: usize, to: usize| {
            let mut sum = 0u64;
            for p in (from..to).step_by(4096) {
                sum += m.bytes[p] as u64;
                cache.touched(4096);
            }
            assert_eq!(sum, 7 * ((to - from) / 4096) as u64);
        };
        // Within the budget: nothing is due, pages stay.
        let half = MAP_BUDGET as usize / 2;
        read(0, half);
        assert!(!cache.sweep_if_due());
        assert!(
            resident_kib(&path) >= half as u64 / 1024,
            "pages read are resident"
        );
        // Past it: the sweep runs and the map's pages are gone, while its bytes still read.
        read(half, len);
        assert!(resident_kib(&path) >= (len / 2) as u64 / 1024);
        assert!(cache.sweep_if_due());
        assert!(
            resident_kib(&path) < 64,
            "{} KiB still resident after the sweep",
            resident_kib(&path)
        );
        assert!(!cache.sweep_if_due(), "the count starts again from zero");
        assert_eq!(m.bytes[len - 1], 7);
    }
}
