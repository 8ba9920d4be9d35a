//! Pages for cached blocks: the memory the block cache's blocks live in, handed back to the
//! system when the cache shrinks.
//!
//! A block read for the cache goes into a page of one anonymous region, not into an
//! allocation of the global allocator. The cache's room changes while it runs (memtables are
//! charged against the same budget), and the blocks a shrinking cache evicts would otherwise
//! stay resident as memory the allocator keeps for reuse: measured with jemalloc's defaults,
//! most of a readwhilewriting run's resident memory past the budget. Here a freed page goes on
//! a free list; free pages the cache's current room has no use for (past a small reserve)
//! are released to the system (`MADV_DONTNEED`) off the read path (the WAL ticker's
//! sweep), and fault back in as zeros when reused.
//!
//! A page stays taken while anything holds a block in it — the cache, a cursor, or a value
//! handed to a caller (values are zero-copy slices of blocks) — and goes back on the free list
//! when the last of them drops. Should the region run out (the blocks held outside the cache
//! can exceed its room) or a block not fit a page, the caller falls back to the heap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// The system's page size, which slot sizes are whole multiples of: a release
/// (`MADV_DONTNEED`) acts on whole pages, so a slot sharing a page with another would zero
/// its neighbour's block, which the cache serves without checking again. 4 KiB on x86_64;
/// 16 or 64 KiB on some arm64 and ppc64 kernels.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// The slot size for blocks of up to `block` bytes on a system of `page`-byte pages.
fn slot_len(block: usize, page: usize) -> usize {
    block.max(1).next_multiple_of(page)
}

pub struct PagePool {
    /// The region: `slots` slots of `slot` bytes. A raw map, so that no `&[u8]` of the whole
    /// region exists while a slot is written through `&mut`.
    map: memmap2::MmapRaw,
    slot: usize,
    slots: u32,
    free: Mutex<Free>,
    /// `free.resident.len()`, readable without the lock.
    resident_free: AtomicUsize,
    /// Free slots kept resident for reuse (the rest are released).
    reserve: usize,
}

#[derive(Default)]
struct Free {
    /// Freed slots whose pages may still be resident; reused first (last freed first).
    resident: Vec<u32>,
    /// Freed slots whose pages were released.
    released: Vec<u32>,
    /// Slots below this were handed out at least once; the ones above were never touched.
    fresh: u32,
}

impl PagePool {
    /// A pool of slots of `slot` bytes (rounded up to whole pages) able to hold `bytes` in
    /// all, or `None` if that address space cannot be had (blocks then live on the heap).
    pub fn new(bytes: u64, slot: usize) -> Option<Arc<PagePool>> {
        let slot = slot_len(slot, page_size());
        let slots = (bytes / slot as u64).min(u32::MAX as u64 - 1) as u32;
        if slots == 0 {
            return None;
        }
        // Address space only: pages become resident as slots are first written.
        let map = memmap2::MmapOptions::new()
            .len(slots as usize * slot)
            .no_reserve_swap()
            .map_anon()
            .ok()?;
        Some(Arc::new(PagePool {
            map: memmap2::MmapRaw::from(map),
            slot,
            slots,
            free: Mutex::new(Free::default()),
            resident_free: AtomicUsize::new(0),
            reserve: (slots as usize / 256).max(16),
        }))
    }

    /// Bytes a slot holds.
    pub fn slot_len(&self) -> usize {
        self.slot
    }

    /// A slot of its own for `len` bytes, or `None` if they do not fit a slot, would fill
    /// no more than half of one (blocks far smaller than a page, of a small `block_size`,
    /// stay on the heap rather than waste most of a page each), or every slot is taken.
    pub fn lease(self: &Arc<Self>, len: usize) -> Option<Lease> {
        if len > self.slot || len * 2 <= self.slot {
            return None;
        }
        let slot = {
            let mut f = self.free.lock();
            if let Some(s) = f.resident.pop() {
                self.resident_free
                    .store(f.resident.len(), Ordering::Relaxed);
                s
            } else if let Some(s) = f.released.pop() {
                s
            } else if f.fresh < self.slots {
                f.fresh += 1;
                f.fresh - 1
            } else {
                return None;
            }
        };
        Some(Lease {
            page: Taken {
                pool: self.clone(),
                slot,
            },
            len,
        })
    }

    /// Releases the pages of free slots to the system, keeping resident as many as fit in
    /// `room` bytes beside the slots taken (or the reserve, if that is more). Returns how
    /// many slots it released.
    ///
    /// `room` is what the cache may hold now: free pages within it are pages the cache
    /// would fill again, and each release interrupts the process's threads on other CPUs
    /// to flush their TLBs, so slots freed by blocks of deleted tables stay for the blocks
    /// that replace them; pages past it (the cache shrank) go back.
    pub fn release_excess(&self, room: u64) -> usize {
        let room_slots = usize::try_from(room / self.slot as u64).unwrap_or(usize::MAX);
        if self.resident_free.load(Ordering::Relaxed) <= self.reserve {
            return 0;
        }
        let mut excess = {
            let mut f = self.free.lock();
            let taken = f.fresh as usize - f.resident.len() - f.released.len();
            let keep = room_slots
                .saturating_sub(taken)
                .max(self.reserve)
                .min(f.resident.len());
            // The most recently freed stay (last freed, first reused).
            let cut = f.resident.len() - keep;
            let excess: Vec<u32> = f.resident.drain(..cut).collect();
            self.resident_free
                .store(f.resident.len(), Ordering::Relaxed);
            excess
        };
        excess.sort_unstable();
        let mut i = 0;
        while i < excess.len() {
            // A run of adjacent slots is one call.
            let mut j = i + 1;
            while j < excess.len() && excess[j] == excess[j - 1] + 1 {
                j += 1;
            }
            let (at, len) = (excess[i] as usize * self.slot, (j - i) * self.slot);
            // SAFETY: these slots were taken off the free list above, so no lease and no
            // frozen block refers to them, and none can until they are leased again — and a
            // lease only hands out a slot after it is back on the free list below. The range
            // lies inside the private anonymous map (slots * slot bytes, page-aligned, as
            // `slot` is a multiple of the page size). MADV_DONTNEED makes its pages read as
            // zeros on next access, which is a valid state for bytes a lease overwrites
            // before anything reads them.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at, len)
            };
            i = j;
        }
        let n = excess.len();
        self.free.lock().released.extend(excess);
        n
    }

    fn put(&self, slot: u32) {
        let mut f = self.free.lock();
        f.resident.push(slot);
        self.resident_free
            .store(f.resident.len(), Ordering::Relaxed);
    }

    /// Slots taken now (leased or holding blocks).
    #[cfg(test)]
    pub fn taken(&self) -> usize {
        let f = self.free.lock();
        f.fresh as usize - f.resident.len() - f.released.len()
    }

    /// The region's start address and length (tests measure its resident pages).
    #[cfg(test)]
    pub fn region(&self) -> (usize, usize) {
        (self.map.as_ptr() as usize, self.map.len())
    }

    fn ptr(&self, slot: u32) -> *mut u8 {
        debug_assert!(slot < self.slots);
        // In bounds: slot < slots, and the map is slots * slot bytes long.
        self.map
            .as_mut_ptr()
            .wrapping_add(slot as usize * self.slot)
    }
}

/// A slot taken from the pool; back on its free list when dropped. Its bytes are reached
/// only through its one owner: a [`Lease`] (the only writer, through `&mut`) or, once frozen,
/// a [`Frozen`] (read-only).
struct Taken {
    pool: Arc<PagePool>,
    slot: u32,
}

impl Taken {
    /// The slot's first `len` (at most a slot's) bytes, read-only.
    fn bytes(&self, len: usize) -> &[u8] {
        debug_assert!(len <= self.pool.slot);
        // SAFETY: the slot was taken off the free list for this `Taken` alone and goes back
        // only when it drops, and `release_excess` only touches free slots, so nothing else
        // reads or changes these bytes; the only `&mut` to them is `Lease::bytes_mut`, which
        // borrows the owning lease mutably, so none exists while this shared borrow of `self`
        // does. `len` is within the slot (callers pass a lease's length, at most a slot), so
        // the bytes lie inside the map, which lives as long as the pool `Arc` held here. The
        // map is anonymous memory, so every byte is initialized (zeros or an earlier block).
        unsafe { std::slice::from_raw_parts(self.pool.ptr(self.slot), len) }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.pool.put(self.slot);
    }
}

/// A slot being filled: `len` writable bytes nothing else can see.
pub struct Lease {
    page: Taken,
    len: usize,
}

impl Lease {
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `Taken::bytes`, the slot is this lease's alone and its `len` bytes lie
        // inside the live map; the borrow is tied to `&mut self`, so no other reference to
        // them (through `bytes`) exists while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.page.pool.ptr(self.page.slot), self.len) }
    }

    pub fn bytes(&self) -> &[u8] {
        self.page.bytes(self.len)
    }

    /// The first `len` bytes as a block's immutable bytes; the slot is freed when the last
    /// clone of them drops.
    pub fn freeze(self, len: usize) -> Bytes {
        Bytes::from_owner(Frozen {
            page: self.page,
            len: len.min(self.len),
        })
    }
}

/// A filled slot, read-only from here on (the lease was consumed by `freeze`).
struct Frozen {
    page: Taken,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        self.page.bytes(self.len)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Resident KiB of the pool's region (mincore(2): other mappings the kernel merges with
    /// it do not count).
    pub(crate) fn resident_kib(pool: &PagePool) -> u64 {
        let (start, len) = pool.region();
        let mut vec = vec![0u8; len.div_ceil(page_size())];
        // SAFETY: `start..start + len` is the pool's live mapping (the caller holds the pool),
        // page-aligned; `vec` has one byte per page of it, as mincore writes.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count() as u64 * (page_size() as u64 / 1024)
    }

    fn filled(pool: &Arc<PagePool>, byte: u8) -> Bytes {
        let mut l = pool.lease(page_size()).expect("a free slot");
        l.bytes_mut().fill(byte);
        l.freeze(page_size() - 1)
    }

    /// Slots are whole pages of the system's size, whatever the block size: with 16 or
    /// 64 KiB pages a 4 KiB slot would share its page with others, and releasing it would
    /// zero theirs.
    #[test]
    fn slots_are_whole_system_pages() {
        for page in [4096, 16384, 65536] {
            for block in [0, 1, 1024, 4096, 4097, 16384, 70000] {
                let slot = slot_len(block, page);
                assert_eq!(slot % page, 0, "block {block}, page {page}");
                assert!(
                    slot >= block && slot < block.max(1) + page,
                    "block {block}, page {page}"
                );
            }
        }
        let pool = PagePool::new(64 << 20, 4096).unwrap();
        assert_eq!(pool.slot_len() % page_size(), 0);
    }
    #[test]
    fn blocks_keep_their_bytes_and_their_slot_while_held() {
        let pool = PagePool::new(8 * page_size() as u64, page_size()).unwrap();
        let held: Vec<Bytes> = (0..8).map(|i| filled(&pool, i as u8)).collect();
        assert_eq!(pool.taken(), 8);
        assert!(pool.lease(page_size()).is_none(), "every slot is taken");
        assert!(pool.lease(page_size() + 1).is_none(), "larger than a slot");
        assert!(
            pool.lease(page_size() / 2).is_none(),
            "half a slot goes to the heap"
        );
        // A clone keeps the slot after the original drops; the others' bytes are untouched
        // by the slots freed and refilled around them.
        let keep = held[3].slice(10..20);
        drop(held);
        assert_eq!(pool.taken(), 1);
        let refilled: Vec<Bytes> = (0..7).map(|_| filled(&pool, 0xee)).collect();
        assert_eq!(&keep[..], &[3u8; 10]);
        assert!(pool.lease(page_size()).is_none());
        assert!(refilled
            .iter()
            .all(|b| b.len() == page_size() - 1 && b.iter().all(|&x| x == 0xee)));
        drop(keep);
        assert_eq!(pool.taken(), 7);
        // An unfilled lease frees its slot too.
        drop(pool.lease(page_size() / 2 + 1).unwrap());
        assert_eq!(pool.taken(), 7);
    }

    /// Free slots the cache's room could fill again stay resident: blocks of deleted tables
    /// free slots that the blocks replacing them reuse, and releasing them would cost every
    /// other CPU the process runs on a TLB flush, and the reuse a page fault. Once the room
    /// shrinks below what is taken plus free, the free slots past it go.
    #[test]
    fn free_slots_within_the_room_stay_resident() {
        let slots = 1024u64;
        let pool = PagePool::new(slots * page_size() as u64, page_size()).unwrap();
        let held: Vec<Bytes> = (0..slots).map(|i| filled(&pool, i as u8 | 1)).collect();
        // Every other block drops: half the slots are free, here and there.
        let kept: Vec<Bytes> = held.into_iter().step_by(2).collect();
        let full = slots * page_size() as u64;
        assert_eq!(
            pool.release_excess(full),
            0,
            "the room has use for them all"
        );
        assert!(resident_kib(&pool) >= slots * 4);
        // The room shrinks to three quarters: a quarter of the slots is past it.
        let released = pool.release_excess(full / 4 * 3);
        assert_eq!(released, slots as usize / 4);
        let resident = resident_kib(&pool);
        assert!(resident <= slots * 3, "{resident} KiB resident");
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, b)| b.iter().all(|&x| x == (i * 2) as u8 | 1)));
    }

    #[test]
    fn free_slots_past_the_reserve_go_back_to_the_system() {
        let slots = 4096;
        let pool = PagePool::new(slots * page_size() as u64, page_size()).unwrap();
        assert_eq!(pool.region().1, slots as usize * page_size());
        assert_eq!(resident_kib(&pool), 0, "nothing resident before use");
        let held: Vec<Bytes> = (0..slots).map(|i| filled(&pool, i as u8 | 1)).collect();
        assert!(resident_kib(&pool) >= slots * 4);
        assert_eq!(pool.release_excess(0), 0, "nothing is free");
        // Keep every eighth block: a shrinking cache frees blocks here and there.
        let kept: Vec<Bytes> = held.into_iter().step_by(8).collect();
        let released = pool.release_excess(0);
        assert_eq!(released, slots as usize - kept.len() - pool.reserve);
        let resident = resident_kib(&pool);
        let bound = (kept.len() + pool.reserve) as u64 * 4;
        assert!(
            resident <= bound,
            "{resident} KiB resident, at most {bound} expected"
        );
        for (i, b) in kept.iter().enumerate() {
            let want = (i * 8) as u8 | 1;
            assert!(b.iter().all(|&x| x == want), "block {i} changed");
        }
        // Released slots are leased again, and read what their new owner wrote.
        let again: Vec<Bytes> = (0..slots as usize - kept.len())
            .map(|_| filled(&pool, 0x5a))
            .collect();
        assert!(again.iter().all(|b| b.iter().all(|&x| x == 0x5a)));
        assert!(pool.lease(page_size()).is_none());
    }
    /// Threads lease, fill, freeze, hold and drop blocks in a small pool while another
    /// releases free slots over and over: a held block's bytes never change (no slot is
    /// handed out twice, or released, while a block in it is held), and every slot comes
    /// back once the blocks drop.
    #[test]
    fn held_blocks_keep_their_bytes_while_threads_churn_and_release_slots() {
        use std::collections::VecDeque;
        use std::sync::atomic::AtomicBool;
        let slots = 64u64;
        let pool = PagePool::new(slots * page_size() as u64, page_size()).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let churners: Vec<_> = (0..3u8)
                .map(|t| {
                    let pool = &pool;
                    s.spawn(move || {
                        let mut held: VecDeque<(u8, Bytes)> = VecDeque::new();
                        for i in 0..20_000u32 {
                            let tag = t.wrapping_mul(85) ^ i as u8;
                            match pool.lease(page_size()) {
                                Some(mut l) => {
                                    l.bytes_mut().fill(tag);
                                    let b = l.freeze(page_size());
                                    // A value handed to a caller: a slice of the block.
                                    held.push_back((tag, b.slice(17..page_size() - 3)));
                                }
                                None => assert!(!held.is_empty() || i > 0),
                            }
                            if held.len() > 15 || (i % 7 == 0 && !held.is_empty()) {
                                let (tag, b) = held.pop_front().unwrap();
                                assert!(b.iter().all(|&x| x == tag), "a held block changed");
                            }
                        }
                        for (tag, b) in held {
                            assert!(b.iter().all(|&x| x == tag), "a held block changed");
                        }
                    })
                })
                .collect();
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    pool.release_excess(0);
                    std::thread::yield_now();
                }
            });
            for c in churners {
                c.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(pool.taken(), 0);
    }
}
