//! Small helpers with no better home.

use std::path::Path;

/// The smallest key greater than every key that starts with `prefix`, or `None` if there is
/// none (the prefix is empty or all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last != 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

/// The number in a file name like `000123.sst` or `000007.log`.
pub fn file_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (stem, _) = name.split_once('.')?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().filter(|&n| n <= MAX_FILE_NUMBER)
}

/// The largest file number the engine gives out (far beyond any real use; what lies above
/// it, in a manifest or a file name, is damage, and numbers below it never wrap).
pub const MAX_FILE_NUMBER: u64 = 1 << 48;

/// Each count's share of their sum (all zero when the sum is): how partition loads and
/// sizes are reported, by the engine and by the tools around it.
pub fn shares_of(counts: &[u64]) -> Vec<f64> {
    let total = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
    counts
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        })
        .collect()
}

/// Runs `f`, turning a panic into `Err` with its message: for the engine's own threads and
/// the commit leader, which must answer the writers waiting on them whatever happens.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// Asks the CPU to start loading the two cache lines at `p` while the caller works on
/// something else.
#[inline]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = p.cast::<i8>();
        // SAFETY: a prefetch is a hint. It never faults and changes nothing the program can
        // observe, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }

    #[test]
    fn shares() {
        assert_eq!(shares_of(&[1, 3]), vec![0.25, 0.75]);
        assert_eq!(shares_of(&[0, 0]), vec![0.0, 0.0]);
        assert!(shares_of(&[]).is_empty());
    }

    #[test]
    fn numbers() {
        assert_eq!(file_number(Path::new("/x/000123.sst")), Some(123));
        assert_eq!(file_number(Path::new("000007.log")), Some(7));
        assert_eq!(file_number(Path::new("MANIFEST-000001")), None);
        assert_eq!(file_number(Path::new("12a.sst")), None);
    }
}
