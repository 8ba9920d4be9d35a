//! The draining partitions that migration picks wait for, each picker's apart: while any
//! picker waits for a partition, lazy moves take no copies out of it (see [`Awaits`]).

use std::collections::{HashMap, HashSet};

/// Who made a migration pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Picker {
    /// The workers, for background migration.
    Background,
    /// One `migrate_now` call (numbered: calls may run at once, each waiting on its own).
    Now(u64),
}

/// Draining partitions (version, partition) that each picker's last migration pick would
/// have taken but found held by a flush of moved copies (see `Core::flush_sources`),
/// having nothing else to take: no copies are moved out of them until that picker's next
/// pick finds them free, or it stops picking. Under a steady load each memtable took
/// copies out of the same partitions, flush after flush held them, and a job for them
/// was picked only if a pick happened to come between one flush's install and the next
/// one's view; now the hold ends with the memtables that took copies before the pick (see
/// `Inner::pick_draining_file`).
///
/// Each picker sets and clears its own record only: with one record for all, a worker's
/// pick cleared (or replaced) the partitions a `migrate_now` was waiting for, opening
/// them to moves again, and a `migrate_now` returning cleared a worker's.
#[derive(Debug, Default)]
pub(crate) struct Awaits {
    /// By picker; none empty.
    by_picker: HashMap<Picker, HashSet<(u32, u32)>>,
    /// The number the next `migrate_now` call picks as.
    next_now: u64,
}

impl Awaits {
    /// A picker for one `migrate_now` call, distinct from every other.
    pub fn now_picker(&mut self) -> Picker {
        self.next_now += 1;
        Picker::Now(self.next_now)
    }

    /// Records the partitions `picker`'s last pick waits for, in place of those it waited
    /// for before.
    pub fn set(&mut self, picker: Picker, parts: HashSet<(u32, u32)>) {
        if parts.is_empty() {
            self.by_picker.remove(&picker);
        } else {
            self.by_picker.insert(picker, parts);
        }
    }

    /// `picker` waits for no partition any more.
    pub fn clear(&mut self, picker: Picker) {
        self.by_picker.remove(&picker);
    }

    /// Whether any picker waits for `part`.
    pub fn contains(&self, part: &(u32, u32)) -> bool {
        self.by_picker.values().any(|parts| parts.contains(part))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_picker_clears_only_its_own_partitions() {
        let mut a = Awaits::default();
        let (now, other) = (a.now_picker(), a.now_picker());
        assert_ne!(now, other);
        a.set(now, HashSet::from([(1, 0)]));
        a.set(Picker::Background, HashSet::from([(1, 1)]));
        a.set(other, HashSet::from([(1, 0)]));
        a.clear(other);
        a.set(Picker::Background, HashSet::new());
        assert!(a.contains(&(1, 0)));
        assert!(!a.contains(&(1, 1)));
        a.clear(now);
        assert!(!a.contains(&(1, 0)));
    }
}
