//! The block cache: decompressed data blocks, bounded by their total size. Blocks reach it
//! through `pread` (see `sst::reader`).
//!
//! The blocks themselves live in [`pages`]: a shrinking cache hands their memory back to the
//! system at the next sweep, where blocks in the global allocator's memory would stay
//! resident as freed memory it keeps.

pub mod pages;

use std::sync::Arc;

use parking_lot::Mutex;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::sst::block::Block;

use pages::{Lease, PagePool};

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
    room: Mutex<Room>,
    pages: Option<Arc<PagePool>>,
}

/// What decides the room blocks may take.
struct Room {
    /// The room asked for by [`BlockCache::set_room`] (the capacity until then).
    asked: u64,
    /// Bytes open tables keep in the heap for as long as they live (their indexes and
    /// filters), registered with [`BlockCache::pin`].
    pinned: u64,
    /// Whether `pinned` comes out of the room (see [`BlockCache::charge_tables`]).
    charged: bool,
}

impl BlockCache {
    /// A cache holding up to `bytes` of blocks of (mostly) up to `block_size` bytes.
    pub fn new(bytes: u64, block_size: usize) -> BlockCache {
        // A sizing hint for the cache's tables; a huge budget must not size them for
        // trillions of blocks.
        let items = (bytes / 4096).clamp(16, 1 << 24) as usize;
        BlockCache {
            cache: Cache::with_weighter(items, bytes.max(1), BlockWeighter),
            capacity: bytes,
            room: Mutex::new(Room {
                asked: bytes,
                pinned: 0,
                charged: false,
            }),
            // Twice the room: blocks evicted while a cursor or a caller still holds them keep
            // their pages. Past that, blocks go to the heap.
            pages: (bytes > 0)
                .then(|| PagePool::new(bytes.saturating_mul(2), block_size))
                .flatten(),
        }
    }

    /// A page of the cache's own for a block of `len` bytes being read into the cache (see
    /// [`pages`]); `None`: read it into the heap.
    pub fn lease(&self, len: usize) -> Option<Lease> {
        self.pages.as_ref()?.lease(len)
    }

    /// Bytes of the pages [`lease`](Self::lease) hands out.
    pub fn page_len(&self) -> usize {
        self.pages.as_ref().map_or(0, |p| p.slot_len())
    }

    #[cfg(test)]
    pub(crate) fn pages(&self) -> Option<&Arc<PagePool>> {
        self.pages.as_ref()
    }

    /// Hands the pages of free block slots the room has no use for back to the system
    /// (off the read path: the WAL ticker calls it).
    pub fn sweep(&self) {
        if let Some(p) = &self.pages {
            p.release_excess(self.room());
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

    /// Caches `searchable` (block `block` of `table` with its search prefixes) in place of
    /// `plain` (the same block without them), which the cache holds or held. Should the
    /// cache not admit the heavier copy (more than one shard of a small cache may hold,
    /// which makes quick_cache drop the entry it had too), or have evicted the plain one
    /// meanwhile, the plain block is cached as it was, not lost.
    pub fn upgrade(&self, table: u64, block: u32, plain: Block, searchable: Block) {
        if self.capacity > 0
            && self
                .cache
                .replace((table, block), searchable, false)
                .is_err()
        {
            self.cache.insert((table, block), plain);
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
        self.update_room(|r| r.asked = bytes);
    }

    /// Takes the bytes tables [`pin`](Self::pin) out of the room from now on, so that the
    /// blocks, the tables' indexes and filters, and whatever else shares the room (the
    /// memtables, see [`crate::Options::memtables_share_cache`]) stay within one budget.
    pub fn charge_tables(&self) {
        self.update_room(|r| r.charged = true);
    }

    /// Registers `bytes` an open table keeps in the heap until it is dropped.
    pub fn pin(&self, bytes: u64) {
        self.update_room(|r| r.pinned = r.pinned.saturating_add(bytes));
    }

    /// Returns bytes registered with [`pin`](Self::pin).
    pub fn unpin(&self, bytes: u64) {
        self.update_room(|r| r.pinned = r.pinned.saturating_sub(bytes));
    }

    /// Bytes open tables keep in the heap (registered with [`pin`](Self::pin)).
    pub fn pinned(&self) -> u64 {
        self.room.lock().pinned
    }

    /// Changes what decides the room and sets the cache's capacity from it: the room asked
    /// for, less what tables pin when they are charged for it. Pinned bytes never take the
    /// room below a quarter of the capacity (or below what was asked, if that is less), so
    /// a database of many tables still caches blocks. Under the lock, so that concurrent
    /// changes set the capacity in the order they were made.
    fn update_room(&self, change: impl FnOnce(&mut Room)) {
        let mut r = self.room.lock();
        let before = self.room_of(&r);
        change(&mut r);
        let room = self.room_of(&r);
        if self.capacity > 0 && room != before {
            self.cache.set_capacity(room);
        }
    }

    fn room_of(&self, r: &Room) -> u64 {
        let mut room = r.asked;
        if r.charged {
            room = room
                .saturating_sub(r.pinned)
                .max(r.asked.min(self.capacity / 4));
        }
        room.clamp(1, self.capacity.max(1))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cache whose room shrinks (the memtables grew) evicts blocks, and the next sweep
    /// hands their pages back to the system; the blocks it keeps read as they were.
    #[test]
    fn pages_of_blocks_a_shrinking_cache_evicts_go_back_at_the_next_sweep() {
        use crate::sst::block::BlockBuilder;
        use crate::types::Kind;
        let cache = BlockCache::new(2 << 20, 4096);
        let pages = cache.pages().expect("a cache has pages").clone();
        let block = |n: u32| {
            let mut b = BlockBuilder::new();
            for j in 0..30u32 {
                b.add(
                    format!("k{n:05}-{j:03}").as_bytes(),
                    1,
                    Kind::Value,
                    &[n as u8; 100],
                );
            }
            let mut raw = Vec::new();
            b.finish_into(&mut raw);
            let mut lease = cache.lease(raw.len()).expect("a free page");
            lease.bytes_mut().copy_from_slice(&raw);
            let data = lease.freeze(raw.len());
            Block::from_bytes(data, true, std::path::Path::new("t"), 0)
                .unwrap()
                .in_page(cache.page_len())
        };
        for n in 0..300 {
            cache.insert(1, n, block(n));
        }
        // The shards' random hashing may have a full shard evict a block or two already.
        let held = (0..300).filter(|&n| cache.get(1, n).is_some()).count() as u64;
        assert!(held >= 280, "only {held} of 300 blocks held");
        let full = pages::tests::resident_kib(&pages);
        assert!(full >= held * 4, "{full} KiB resident for {held} blocks");
        cache.sweep();
        assert!(
            pages::tests::resident_kib(&pages) >= held * 4,
            "a sweep released pages of blocks still held"
        );
        cache.set_room(128 << 10);
        let kept: Vec<u32> = (0..300).filter(|&n| cache.get(1, n).is_some()).collect();
        assert!(
            !kept.is_empty() && kept.len() < 40,
            "{} blocks kept",
            kept.len()
        );
        cache.sweep();
        let after = pages::tests::resident_kib(&pages);
        let bound = (kept.len() as u64 + 16) * 4;
        assert!(
            after <= bound,
            "{after} KiB resident after the sweep, at most {bound}"
        );
        for n in kept {
            let b = cache.get(1, n).unwrap();
            let e = b.entry(29, std::path::Path::new("t"), 0).unwrap();
            assert_eq!(e.key, format!("k{n:05}-029").as_bytes());
            assert_eq!(&e.value[..], &[n as u8; 100]);
        }
    }

    /// Upgrading a cached block to its searchable copy never loses the block: where the
    /// cache admits the copy it holds the copy, and where it does not (a small cache whose
    /// one shard may hold the plain block but not the heavier copy) it keeps the plain one.
    #[test]
    fn an_upgrade_the_cache_cannot_admit_keeps_the_plain_block() {
        use crate::sst::block::BlockBuilder;
        use crate::types::Kind;
        let mut b = BlockBuilder::new();
        for j in 0..30u32 {
            b.add(format!("k{j:05}").as_bytes(), 1, Kind::Value, &[7; 100]);
        }
        let mut raw = Vec::new();
        b.finish_into(&mut raw);
        let file = std::path::Path::new("t");
        let plain = Block::from_bytes(bytes::Bytes::from(raw), false, file, 0).unwrap();
        let searchable = plain.with_search().expect("a plain block gets prefixes");
        let (light, heavy) = (plain.size() as u64, searchable.size() as u64);
        assert!(heavy > light);
        // Capacities from one that admits neither to twice one that admits both: somewhere
        // in between the plain block is admitted and the copy is not.
        let (mut kept_plain, mut upgraded) = (0, 0);
        for cap in (light / 2..heavy * 2).step_by(16) {
            let cache = BlockCache::new(cap, 4096);
            cache.insert(1, 0, plain.clone());
            if cache.get(1, 0).is_none() {
                continue; // not even the plain block fits
            }
            cache.upgrade(1, 0, plain.clone(), searchable.clone());
            let held = cache
                .get(1, 0)
                .unwrap_or_else(|| panic!("capacity {cap}: the upgrade lost the block"));
            if held.is_searchable() {
                upgraded += 1;
            } else {
                kept_plain += 1;
            }
            assert_eq!(&held.entry(29, file, 0).unwrap().key[..], b"k00029");
        }
        assert!(
            kept_plain > 0 && upgraded > 0,
            "the capacities tried must include both cases: {kept_plain} kept plain, {upgraded} upgraded"
        );
    }

    /// Bytes tables pin come out of the room once the cache is charged for them, down to
    /// a floor of a quarter of the capacity, and go back when they are unpinned.
    #[test]
    fn pinned_table_bytes_come_out_of_the_room_once_charged() {
        let cap = 4u64 << 20;
        let cache = BlockCache::new(cap, 4096);
        // The room is split over the cache's shards, each rounded up.
        let room_is = |want: u64, what: &str| {
            let room = cache.room();
            assert!(
                room.abs_diff(want) < 1024,
                "{what}: room {room}, expected ~{want}"
            );
        };
        cache.pin(1 << 20);
        room_is(cap, "not charged yet");
        assert_eq!(cache.pinned(), 1 << 20);
        cache.charge_tables();
        room_is(cap - (1 << 20), "charged, 1 MiB pinned");
        cache.set_room(2 << 20);
        room_is(1 << 20, "asked 2 MiB, 1 pinned");
        cache.pin(3 << 20);
        room_is(cap / 4, "pins stop at a quarter");
        cache.set_room(512 << 10);
        room_is(512 << 10, "or at what was asked");
        cache.unpin(3 << 20);
        cache.set_room(cap);
        room_is(cap - (1 << 20), "3 MiB unpinned");
        cache.unpin(1 << 20);
        room_is(cap, "all unpinned");
        assert_eq!(cache.pinned(), 0);
    }
}
