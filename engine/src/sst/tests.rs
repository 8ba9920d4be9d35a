//! Round-trip, range and corruption tests for whole SSTables.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::cache::BlockCache;
use crate::fs::StdFs;
use crate::sst::bloom::key_hash;
use crate::sst::format::{block_trailer, BlockHandle, Footer, COMPRESSION_NONE};
use crate::types::{Entry, Kind};

fn entries(n: u32) -> Vec<Entry> {
    let mut v = Vec::new();
    for i in 0..n {
        let key = Bytes::from(format!("key{i:06}"));
        // Two versions of every third key, a tombstone on every seventh.
        if i % 3 == 0 {
            v.push(Entry {
                key: key.clone(),
                seqno: 1000 + i as u64,
                kind: if i % 7 == 0 {
                    Kind::Delete
                } else {
                    Kind::Value
                },
                value: if i % 7 == 0 {
                    Bytes::new()
                } else {
                    Bytes::from(format!("new{i}"))
                },
            });
        }
        v.push(Entry {
            key,
            seqno: 1 + i as u64,
            kind: Kind::Value,
            value: Bytes::from(format!("value{i}-{}", "x".repeat((i % 50) as usize))),
        });
    }
    v
}

fn write(path: &Path, es: &[Entry], compression: Compression) -> TableProps {
    write_format(path, es, compression, true)
}

fn write_format(
    path: &Path,
    es: &[Entry],
    compression: Compression,
    key_delta: bool,
) -> TableProps {
    write_sized(path, es, compression, key_delta, 512)
}

pub(crate) fn write_sized(
    path: &Path,
    es: &[Entry],
    compression: Compression,
    key_delta: bool,
    block_size: usize,
) -> TableProps {
    let mut w = TableWriter::new(
        std::sync::Arc::new(StdFs),
        path,
        TableOptions {
            block_size,
            compression,
            key_delta,
            bloom_bits_per_key: 10,
        },
        TableOwner {
            kind: TableKind::Data,
            layout_version: 2,
            fingerprint: 77,
            partition: 3,
        },
    )
    .unwrap();
    for e in es {
        w.add(e).unwrap();
    }
    w.finish().unwrap().0
}

fn open(path: &Path, cache: bool) -> crate::Result<Arc<Table>> {
    let c = cache.then(|| Arc::new(BlockCache::new(1 << 20, 4096)));
    Table::open(&StdFs, path, 1, c).map(Arc::new)
}

/// Every `step`th entry of `es` is what a point read of `t` at its seqno returns.
fn assert_finds(t: &Table, es: &[Entry], step: usize) {
    for e in es.iter().step_by(step) {
        let got = t.get(&e.key, key_hash(&e.key), e.seqno).unwrap();
        assert_eq!(got.as_ref(), Some(e), "{:?}", e.key);
    }
}

/// A block or entry index past the end, from a caller of the public table and block
/// API, is an error naming what it indexed, not a panic; with a cache and without.
#[test]
fn an_index_past_the_end_is_an_error() {
    for cached in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000007.sst");
        write(&p, &entries(500), Compression::None);
        let t = open(&p, cached).unwrap();
        let n = t.block_count();
        assert!(n > 1);
        let out_of_range = |r: crate::Result<block::Block>| match r {
            Err(e @ crate::Error::OutOfRange { .. }) => e.to_string(),
            other => panic!("{:?}", other.map(|b| b.len())),
        };
        let e = out_of_range(t.block(n));
        assert_eq!(e, format!("data block {n} does not exist (there are {n})"));
        out_of_range(t.read_block(usize::MAX, reader::Fill::No));
        out_of_range(t.read_block_ahead(n, &mut reader::Readahead::default()));
        let b = t.block(n - 1).unwrap();
        assert!(b.entry(b.len() - 1, &p, 0).is_ok());
        let e = b.entry(b.len(), &p, 0).unwrap_err();
        assert!(matches!(e, crate::Error::OutOfRange { .. }), "{e}");
    }
}

#[test]
fn round_trip_gets_and_properties() {
    for compression in [Compression::None, Compression::Zstd(3)] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000007.sst");
        let es = entries(2000);
        let props = write(&p, &es, compression);
        assert_eq!(props.entries, es.len() as u64);
        assert_eq!(
            (props.layout_version, props.partition, props.fingerprint),
            (2, 3, 77)
        );
        assert_eq!(props.smallest, b"key000000");
        assert_eq!(props.largest, b"key001999");
        let t = open(&p, true).unwrap();
        assert_eq!(t.props(), &props);
        assert_finds(&t, &es, 1);
        // A snapshot between the two versions sees the older one.
        let k = b"key000003";
        let got = t.get(k, key_hash(k), 500).unwrap().unwrap();
        assert_eq!(got.seqno, 4);
        assert!(t.get(k, key_hash(k), 3).unwrap().is_none());
        assert!(t
            .get(b"key0000035", key_hash(b"key0000035"), u64::MAX)
            .unwrap()
            .is_none());
        assert!(t.get(b"zzz", key_hash(b"zzz"), u64::MAX).unwrap().is_none());
    }
}

#[test]
fn plain_tables_are_format_version_1_and_key_delta_tables_version_2_and_smaller() {
    use crate::sst::format::*;
    let es = entries(3000);
    for compression in [Compression::None, Compression::Zstd(3)] {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("1.sst"), dir.path().join("2.sst"));
        write_format(&p1, &es, compression, false);
        write_format(&p2, &es, compression, true);
        let (n1, n2) = (
            std::fs::metadata(&p1).unwrap().len(),
            std::fs::metadata(&p2).unwrap().len(),
        );
        assert!(
            n2 * 100 < n1 * 85,
            "{compression:?}: v2 {n2} bytes, v1 {n1}"
        );
        for cache in [false, true] {
            let (t1, t2) = (open(&p1, cache).unwrap(), open(&p2, cache).unwrap());
            assert_eq!(
                (t1.props().format_version, t2.props().format_version),
                (1, 2)
            );
            let codecs = (t1.stored_block(0).0, t2.stored_block(0).0);
            match compression {
                Compression::None => assert_eq!(codecs, (COMPRESSION_NONE, COMPRESSION_DELTA)),
                Compression::Zstd(_) => {
                    assert_eq!(codecs, (COMPRESSION_ZSTD, COMPRESSION_DELTA_ZSTD))
                }
            }
            for t in [&t1, &t2] {
                let fwd: Vec<Entry> = t.iter().map(|e| e.unwrap()).collect();
                assert_eq!(fwd, es);
                let mut back: Vec<Entry> = t.iter().rev().map(|e| e.unwrap()).collect();
                back.reverse();
                assert_eq!(back, es);
                assert_finds(t, &es, 7);
            }
        }
    }
}

#[test]
fn a_block_of_the_largest_key_and_value_round_trips_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.sst");
    let es = vec![Entry {
        key: Bytes::from(vec![b'k'; crate::MAX_KEY_LEN]),
        seqno: 9,
        kind: Kind::Value,
        value: Bytes::from(vec![7u8; crate::MAX_VALUE_LEN]),
    }];
    write(&p, &es, Compression::Zstd(1));
    for cache in [false, true] {
        let t = open(&p, cache).unwrap();
        assert_eq!(t.stored_block(0).0, format::COMPRESSION_DELTA_ZSTD);
        let got: Vec<Entry> = t.iter().map(|e| e.unwrap()).collect();
        assert_eq!(got, es);
    }
}

/// Blocks that point reads and seeks search enter the block cache with search prefixes;
/// blocks a scan only walks through enter it as they are (prefixes would cost every walked
/// block and speed up no search), and get them the first time a read searches them. Reads
/// give the same entries either way.
#[test]
fn searched_blocks_are_cached_searchable_and_walked_blocks_plain() {
    use crate::cursor::TableCursor;
    use crate::iter::{Direction, KeyRange};
    for (compression, key_delta) in [
        (Compression::None, true),
        (Compression::Zstd(3), true),
        (Compression::None, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000007.sst");
        let es = entries(2000);
        write_format(&p, &es, compression, key_delta);
        let t = open(&p, true).unwrap();
        let n = t.block_count();
        assert!(n > 8, "{n} blocks");
        // A scan from the start: the first block is loaded without a search, and so is
        // every block it walks into.
        let mut c = TableCursor::new(t.clone(), KeyRange::all(), Direction::Forward, true).unwrap();
        for _ in 0..200 {
            c.advance().unwrap();
        }
        let walked = (0..n).take_while(|&i| t.cached_block(i).is_some()).count();
        assert!(walked >= 2, "the scan walked {walked} blocks");
        for i in 0..walked {
            assert!(!t.cached_block(i).unwrap().is_searchable(), "block {i}");
        }
        // A point read in a walked block gives the cached block its prefixes (counted in
        // its size); the walked block next to it stays as it is.
        let first = &es[0];
        let got = t.get(&first.key, key_hash(&first.key), u64::MAX).unwrap();
        assert_eq!(got.as_ref(), Some(first));
        let b = t.cached_block(0).unwrap();
        assert!(b.is_searchable(), "a searched block kept plain");
        assert!(
            b.size() > b.data().len() + 16,
            "size {} without its prefixes",
            b.size()
        );
        assert!(!t.cached_block(1).unwrap().is_searchable());
        // So does a seek that lands in one (a scan starting there).
        let in_second = t.cached_block(1).unwrap().entry(0, &p, 0).unwrap().key;
        let range = KeyRange {
            start: Bound::Included(in_second.clone()),
            end: Bound::Unbounded,
        };
        let c = TableCursor::new(t.clone(), range, Direction::Forward, true).unwrap();
        assert_eq!(c.key(), &in_second[..]);
        assert!(t.cached_block(1).unwrap().is_searchable());
        assert!(!t.cached_block(2).unwrap().is_searchable());
        // A point read in a block nobody has loaded caches it searchable, and a seek does too.
        let last = &es[es.len() - 1];
        let got = t.get(&last.key, key_hash(&last.key), u64::MAX).unwrap();
        assert_eq!(got.as_ref(), Some(last));
        assert!(t.cached_block(n - 1).unwrap().is_searchable());
        let mid = &es[es.len() / 2];
        let range = KeyRange {
            start: Bound::Included(mid.key.clone()),
            end: Bound::Unbounded,
        };
        let c = TableCursor::new(t.clone(), range, Direction::Forward, true).unwrap();
        assert_eq!(c.key(), &mid.key[..]);
        let bi = t.find_block(&mid.key, u64::MAX);
        assert!(t.cached_block(bi).unwrap().is_searchable(), "block {bi}");
        // Point reads find the same entries in blocks walked into the cache (searchable once
        // searched) and in blocks a search loaded.
        assert_finds(&t, &es, 1);
    }
}

/// Opening a table reads its footer, then its metadata (filter, index, properties) in one
/// read from the first of them to the end of the file.
#[test]
fn metadata_is_read_from_its_first_block_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000008.sst");
    write(&p, &entries(40_000), Compression::None);
    let len = std::fs::metadata(&p).unwrap().len();
    let r = crate::fs::Fs::open_random(&StdFs, &p).unwrap();
    let (start, meta) = super::reader::read_meta(r.as_ref(), len, &p).unwrap();
    let whole = std::fs::read(&p).unwrap();
    assert_eq!(&meta[..], &whole[start as usize..]);
    assert!(start > len / 2, "metadata from {start} of {len}");
}

/// A table file extended past its footer's blocks (sparse here, the footer copied to the new
/// end) is refused as corrupt, naming the footer's offset, before anything past the footer's
/// own bytes is read. Its open used to read from the first metadata block to the end of the
/// file: the whole extension (2 TiB aborted the process on a failed allocation).
#[test]
fn a_table_extended_past_its_metadata_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000010.sst");
    write(&p, &entries(1000), Compression::None);
    let whole = std::fs::read(&p).unwrap();
    let footer = &whole[whole.len() - super::format::FOOTER_LEN..];
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let len = 64u64 << 20;
    f.set_len(len).unwrap();
    use std::os::unix::fs::FileExt;
    let at = len - footer.len() as u64;
    f.write_all_at(footer, at).unwrap();
    drop(f);
    let Err(e) = open(&p, true) else {
        panic!("opened a table extended past its metadata");
    };
    assert!(e.is_corruption(), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("not at the footer") && s.contains(&at.to_string()),
        "{s}"
    );
}

/// A table whose file is cut short under an open reader (another process truncating it,
/// or a disk that can no longer read those blocks) gives an error naming the file from
/// every read of what is gone: a point read, walks both ways, with and without a block
/// cache, and verification. Read through a memory map, as tables once were, the same reads
/// were a SIGBUS that killed the process.
#[test]
fn a_table_cut_short_under_its_reader_is_an_error_not_a_signal() {
    use crate::cursor::TableCursor;
    use crate::iter::{Direction, KeyRange};

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000009.sst");
    let es = entries(40_000);
    write(&p, &es, Compression::None);
    let whole = std::fs::read(&p).unwrap();
    let names_the_file = |e: crate::Error, what: &str| match e {
        crate::Error::Io { path, source } => {
            assert_eq!(path, p, "{what}");
            assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof, "{what}");
            assert!(
                source.to_string().contains(" at offset "),
                "{what}: {source}"
            );
        }
        other => panic!("{what}: {other}"),
    };
    for cache in [true, false] {
        let what = |w: &str| format!("{w}, cache {cache}");
        let t = open(&p, cache).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(whole.len() as u64 / 4)
            .unwrap();
        let last = &es[es.len() - 1];
        let e = t.get(&last.key, key_hash(&last.key), u64::MAX).unwrap_err();
        names_the_file(e, &what("point read"));
        let e = t
            .iter()
            .find_map(|r| r.err())
            .expect("a forward walk fails");
        names_the_file(e, &what("forward walk"));
        for fill in [false, true] {
            let back = TableCursor::new(t.clone(), KeyRange::all(), Direction::Backward, fill);
            names_the_file(back.err().unwrap(), &what("backward walk"));
        }
        names_the_file(t.verify_blocks().unwrap_err(), &what("verification"));
        // What is still there reads as before.
        let first = &es[0];
        let got = t.get(&first.key, key_hash(&first.key), u64::MAX).unwrap();
        assert_eq!(got.as_ref(), Some(first), "{}", what("first key"));
        std::fs::write(&p, &whole).unwrap();
    }
}

#[test]
fn iteration_both_directions_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("1.sst");
    let es = entries(700);
    write(&p, &es, Compression::None);
    let t = open(&p, false).unwrap();
    let fwd: Vec<Entry> = t.iter().map(|e| e.unwrap()).collect();
    assert_eq!(fwd, es);
    let mut back: Vec<Entry> = t.iter().rev().map(|e| e.unwrap()).collect();
    back.reverse();
    assert_eq!(back, es);

    let k = |i: u32| Bytes::from(format!("key{i:06}"));
    let cases = [
        (Bound::Included(k(100)), Bound::Excluded(k(200))),
        (Bound::Excluded(k(99)), Bound::Included(k(300))),
        (Bound::Unbounded, Bound::Included(k(5))),
        (Bound::Included(k(650)), Bound::Unbounded),
        (
            Bound::Included(Bytes::from("key0001005")),
            Bound::Excluded(Bytes::from("key0002")),
        ),
        (Bound::Included(k(400)), Bound::Excluded(k(400))),
    ];
    for (s, e) in cases {
        let expect: Vec<Entry> = es
            .iter()
            .filter(|x| {
                crate::iter::KeyRange {
                    start: s.clone(),
                    end: e.clone(),
                }
                .contains(&x.key)
            })
            .cloned()
            .collect();
        let got: Vec<Entry> = TableIter::new(t.clone(), s.clone(), e.clone())
            .map(|x| x.unwrap())
            .collect();
        assert_eq!(got, expect, "{s:?}..{e:?}");
        let mut got: Vec<Entry> = TableIter::new(t.clone(), s.clone(), e.clone())
            .rev()
            .map(|x| x.unwrap())
            .collect();
        got.reverse();
        assert_eq!(got, expect, "rev {s:?}..{e:?}");
        // Interleaved ends meet in the middle without repeating an entry.
        let mut it = TableIter::new(t.clone(), s.clone(), e.clone());
        let (mut front, mut backs) = (Vec::new(), Vec::new());
        loop {
            match it.next() {
                Some(x) => front.push(x.unwrap()),
                None => break,
            }
            match it.next_back() {
                Some(x) => backs.push(x.unwrap()),
                None => break,
            }
        }
        backs.reverse();
        front.extend(backs);
        assert_eq!(front, expect, "interleaved {s:?}..{e:?}");
    }
}

/// Flips one byte at a time across the whole file: opening, reading every key and iterating
/// must each either succeed with exactly the original data or fail with a corruption error
/// naming the file — never panic and never return a different value.
#[test]
fn every_flipped_byte_is_detected_or_harmless() {
    // 4 KiB blocks are read into the cache's pages, 512-byte ones onto the heap.
    for (compression, block_size) in [
        (Compression::None, 512),
        (Compression::Zstd(1), 512),
        (Compression::None, 4096),
        (Compression::Zstd(1), 4096),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000009.sst");
        let es = entries(120);
        write_sized(&p, &es, compression, true, block_size);
        let orig = std::fs::read(&p).unwrap();
        let bad = dir.path().join("bad.sst");
        for i in 0..orig.len() {
            let mut c = orig.clone();
            c[i] ^= 0x20;
            std::fs::write(&bad, &c).unwrap();
            let t = match open(&bad, true) {
                Ok(t) => t,
                Err(e) => {
                    assert!(e.is_corruption(), "byte {i}: {e}");
                    assert!(e.to_string().contains("bad.sst"), "byte {i}: {e}");
                    continue;
                }
            };
            for e in &es {
                match t.get(&e.key, key_hash(&e.key), e.seqno) {
                    Ok(Some(got)) => assert_eq!(&got, e, "byte {i}"),
                    Ok(None) => panic!("byte {i}: lost {:?}", e.key),
                    Err(err) => assert!(err.is_corruption(), "byte {i}: {err}"),
                }
            }
            let mut n = 0;
            for r in t.iter() {
                match r {
                    Ok(got) => {
                        assert_eq!(got, es[n], "byte {i}");
                        n += 1;
                    }
                    Err(err) => {
                        assert!(err.is_corruption(), "byte {i}: {err}");
                        break;
                    }
                }
            }
        }
    }
}

/// Bytes that pass a block's CRC but are not what the writer wrote (a bug, or a collision)
/// must still give an error naming the file and block, never a panic or a wrong entry.
#[test]
fn a_key_delta_block_that_decodes_wrong_under_a_valid_crc_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000005.sst");
    let es = entries(400);
    write(&p, &es, Compression::None);
    let (codec, h) = open(&p, false).unwrap().stored_block(1);
    assert_eq!(codec, format::COMPRESSION_DELTA);
    let mut bytes = std::fs::read(&p).unwrap();
    let (start, end) = (h.offset as usize, (h.offset + h.size) as usize);
    // The block's first entry shares nothing with a previous key; claim it shares a byte.
    let (_, a) = crate::coding::get_varint(&bytes[start..]).unwrap();
    let (_, b) = crate::coding::get_varint(&bytes[start + a..]).unwrap();
    assert_eq!(bytes[start + a + b], 0);
    bytes[start + a + b] = 1;
    let trailer = format::block_trailer(&bytes[start..end], codec);
    bytes[end..end + format::BLOCK_TRAILER_LEN].copy_from_slice(&trailer);
    std::fs::write(&p, &bytes).unwrap();
    for cache in [false, true] {
        let t = open(&p, cache).unwrap();
        let mut in_block = 0;
        for e in &es {
            let got = t.get(&e.key, key_hash(&e.key), e.seqno);
            if t.find_block(&e.key, e.seqno) == 1 {
                let err = got.unwrap_err();
                let msg = err.to_string();
                assert!(err.is_corruption(), "{msg}");
                // The offset is that of the damaged entry, inside the block.
                let at: u64 = msg
                    .split("at offset ")
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no offset in {msg}"));
                assert!(msg.contains("000005.sst"), "{msg}");
                assert!(
                    (h.offset..h.offset + h.size).contains(&at),
                    "{msg}: block {h:?}"
                );
                in_block += 1;
            } else {
                assert_eq!(&got.unwrap().unwrap(), e);
            }
        }
        assert!(in_block > 0);
        assert!(
            t.iter().any(|r| r.is_err()),
            "a scan reads the damaged block"
        );
    }
}

/// A zstd frame whose bytes pass the block CRC but were changed (a bug, or a collision)
/// decodes to an error, never to different entries: every frame carries a checksum of
/// what it decompresses to.
#[test]
fn a_zstd_block_changed_under_a_valid_crc_never_yields_a_wrong_entry() {
    for key_delta in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let pristine = dir.path().join("000006.sst");
        let es = entries(300);
        // Blocks of 4 KiB: a block read for the cache decodes into a page of its own.
        write_sized(&pristine, &es, Compression::Zstd(3), key_delta, 4096);
        let (codec, h) = open(&pristine, false).unwrap().stored_block(0);
        assert!(codec == format::COMPRESSION_ZSTD || codec == format::COMPRESSION_DELTA_ZSTD);
        let bytes = std::fs::read(&pristine).unwrap();
        let (start, end) = (h.offset as usize, (h.offset + h.size) as usize);
        let (mut refused, mut wrong) = (0, 0);
        // Past the length varint and the frame header, through the frame's content.
        for pos in (start + 8..end - 4).step_by(3) {
            let mut b = bytes.clone();
            b[pos] ^= 0x04;
            let trailer = format::block_trailer(&b[start..end], codec);
            b[end..end + format::BLOCK_TRAILER_LEN].copy_from_slice(&trailer);
            let p = dir.path().join("000007.sst");
            std::fs::write(&p, &b).unwrap();
            // Decoded into memory of its own, and into a page of the cache's.
            for cache in [false, true] {
                let t = open(&p, cache).unwrap();
                match t.iter().collect::<crate::Result<Vec<Entry>>>() {
                    Err(e) => {
                        assert!(e.is_corruption(), "{e}");
                        refused += 1;
                    }
                    Ok(got) if got != es => wrong += 1,
                    Ok(_) => {}
                }
            }
        }
        assert_eq!(
            wrong, 0,
            "key_delta {key_delta}: {wrong} changed frames read as entries ({refused} refused)"
        );
        assert!(refused > 0);
    }
}

/// An index block is never cut: with 64 KiB keys (one per data block) a table of ~1000
/// blocks has an index larger than any block the key-delta decoder accepts. It is stored
/// as it is, and the table opens (it was written, then refused, failing the flush).
#[test]
fn a_key_delta_table_whose_index_outgrows_the_block_limit_opens() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000008.sst");
    let key = |i: u32| {
        let mut k = vec![b'k'; crate::MAX_KEY_LEN];
        k[crate::MAX_KEY_LEN - 8..].copy_from_slice(format!("{i:08}").as_bytes());
        Bytes::from(k)
    };
    let n = (codec::MAX_BLOCK_LEN / crate::MAX_KEY_LEN) as u32 + 8;
    let es: Vec<Entry> = (0..n)
        .map(|i| Entry {
            key: key(i),
            seqno: 1,
            kind: Kind::Value,
            value: Bytes::from_static(b"v"),
        })
        .collect();
    write_format(&p, &es, Compression::None, true);
    let t = open(&p, false).unwrap();
    assert_eq!(t.props().format_version, 2);
    assert_eq!(t.block_count(), n as usize);
    assert_eq!(t.stored_block(0).0, format::COMPRESSION_DELTA);
    for e in es.iter().step_by(97) {
        assert_eq!(&t.get(&e.key, key_hash(&e.key), 1).unwrap().unwrap(), e);
    }
    assert_eq!(t.iter().count(), n as usize);
}

#[test]
fn every_truncation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000011.sst");
    write(&p, &entries(50), Compression::None);
    let orig = std::fs::read(&p).unwrap();
    let cut = dir.path().join("000012.sst");
    for n in 0..orig.len() {
        let e = Table::from_bytes(Bytes::copy_from_slice(&orig[..n]), &p, 1, None).unwrap_err();
        assert!(e.is_corruption(), "cut at {n}: {e}");
        // Opened from disk with a cache, the metadata is read with pread instead.
        std::fs::write(&cut, &orig[..n]).unwrap();
        let e = open(&cut, true).unwrap_err();
        assert!(e.is_corruption(), "cut at {n}, opened: {e}");
        assert!(e.to_string().contains("000012.sst"), "cut at {n}: {e}");
    }
}

/// `es` written with small blocks (so lookups must search the index) and opened.
fn small_block_table(dir: &Path, es: &[Entry]) -> Arc<Table> {
    let p = dir.join("1.sst");
    write(&p, es, Compression::None);
    let t = open(&p, true).unwrap();
    assert!(
        t.block_count() > 10,
        "small blocks: the index must be searched"
    );
    t
}

/// The block a search starts at is exactly the first whose last key is >= the key (an
/// earlier one would still find the entry, a block later, but read a block for nothing).
fn assert_search_starts(t: &Table, probes: &[Vec<u8>]) {
    let last_keys: Vec<Vec<u8>> = t.index_keys().map(|k| k.to_vec()).collect();
    for k in probes {
        let want = last_keys
            .iter()
            .position(|lk| lk.as_slice() >= k.as_slice())
            .unwrap_or(last_keys.len());
        let shown = String::from_utf8_lossy(k);
        assert_eq!(t.find_block(k, u64::MAX), want, "{shown:?}");
    }
}

/// Keys of every length around the index's 8-byte search prefix, many sharing it (short keys
/// and keys padded with zero bytes tie with each other): every one is found at every
/// version, and no absent key in between is.
#[test]
fn lookups_with_keys_that_tie_on_the_index_prefix() {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for stem in [&b""[..], b"a", b"ab\x00", b"abcdefg", b"abcdefgh"] {
        for len in 0..12usize {
            for fill in [0u8, 1, 0xff] {
                let mut k = stem.to_vec();
                while k.len() < len {
                    k.push(fill);
                }
                k.truncate(len.max(stem.len()));
                keys.push(k);
            }
        }
    }
    keys.sort();
    keys.dedup();
    let mut es = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        for s in [3u64, 2] {
            es.push(Entry {
                key: Bytes::from(k.clone()),
                seqno: 10 * i as u64 + s,
                kind: Kind::Value,
                value: Bytes::from(format!("v{i}-{s}-{}", "x".repeat(40))),
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let t = small_block_table(dir.path(), &es);
    for e in &es {
        let got = t.get(&e.key, key_hash(&e.key), e.seqno).unwrap().unwrap();
        assert_eq!(&got, e);
    }
    assert_search_starts(&t, &keys);
    for k in &keys {
        for extra in [0u8, 1] {
            let mut absent = k.clone();
            absent.push(extra);
            if keys.binary_search(&absent).is_err() {
                assert!(t.search(&absent, u64::MAX).unwrap().is_none(), "{absent:?}");
            }
        }
    }
}

/// Keys sharing a long prefix (zero-padded numbers behind a tag), searched by keys inside
/// the table and by keys that leave the shared prefix early, late, or end inside it: the
/// search lands on the first block whose last key is >= the key.
#[test]
fn lookups_with_keys_that_share_a_long_prefix() {
    let keys: Vec<Vec<u8>> = (0..400u32)
        .map(|i| format!("acct:{:016}", i * 7 + 3).into_bytes())
        .collect();
    let es: Vec<Entry> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Entry {
            key: Bytes::from(k.clone()),
            seqno: i as u64 + 1,
            kind: Kind::Value,
            value: Bytes::from(format!("v{i}-{}", "x".repeat(40))),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let t = small_block_table(dir.path(), &es);
    let mut probes: Vec<Vec<u8>> = keys.clone();
    for k in &keys {
        let mut next = k.clone();
        *next.last_mut().unwrap() += 1;
        probes.push(next);
    }
    for p in [
        &b""[..],
        b"a",
        b"acct",
        b"acct:",
        b"acct:0",
        b"acct:00000000000",
        b"acct:0000000000000003",
        b"acct:9",
        b"acct;",
        b"accs:9999999999999999",
        b"b",
        b"acct:\xff",
    ] {
        probes.push(p.to_vec());
    }
    assert_search_starts(&t, &probes);
    for e in &es {
        let got = t.get(&e.key, key_hash(&e.key), e.seqno).unwrap().unwrap();
        assert_eq!(&got, e);
    }
}

/// Blocks read for the cache go into its pages (and are charged a whole page); a value handed
/// out is a slice of its block's page, so the page must stay as it is for as long as the value
/// lives, through the block's eviction and every page freed and refilled around it.
#[test]
fn values_from_blocks_in_cache_pages_outlive_their_eviction() {
    for (compression, key_delta) in [
        (Compression::None, false),
        (Compression::None, true),
        (Compression::Zstd(1), false),
        (Compression::Zstd(1), true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000011.sst");
        let es: Vec<Entry> = (0..3000u32)
            .map(|i| Entry {
                key: Bytes::from(format!("key{i:06}")),
                seqno: 1 + i as u64,
                kind: Kind::Value,
                value: Bytes::from(format!("{i:06}").repeat(20)),
            })
            .collect();
        write_sized(&p, &es, compression, key_delta, 4096);
        // Room for ~16 blocks, pages for ~32: most reads evict a block and reuse a page.
        let cache = Arc::new(BlockCache::new(64 << 10, 4096));
        let t = Arc::new(Table::open(&StdFs, &p, 1, Some(cache.clone())).unwrap());
        assert!(t.block_count() > 60, "{} blocks", t.block_count());
        // A block a scan walks into is cached without search prefixes: its size is its page
        // exactly (its bytes, trailer left out, are fewer).
        {
            use crate::cursor::TableCursor;
            use crate::iter::{Direction, KeyRange};
            let c = TableCursor::new(t.clone(), KeyRange::all(), Direction::Forward, true).unwrap();
            assert_eq!(c.key(), &es[0].key[..]);
        }
        let b = t.cached_block(0).expect("the block just read is cached");
        assert!(!b.is_searchable());
        assert!(b.data().len() < 4096);
        assert_eq!(b.size(), 4096, "a block in a page is charged the page");
        assert_eq!(cache.pages().unwrap().taken(), 1);
        // A point read in it gives it search prefixes, in the same page: it is charged the
        // page and the prefixes (no second page taken).
        let first = &es[0];
        let got = t.get(&first.key, key_hash(&first.key), u64::MAX).unwrap();
        assert_eq!(got.as_ref(), Some(first));
        let up = t.cached_block(0).unwrap();
        assert!(up.is_searchable());
        let on_heap = crate::sst::block::Block::from_bytes(b.data().clone(), true, &p, 0).unwrap();
        assert_eq!(
            up.size() - on_heap.size(),
            4096 - b.data().len(),
            "the searchable block is charged its page too"
        );
        assert_eq!(cache.pages().unwrap().taken(), 1);
        drop((b, up));
        // Keep the values of a few far-apart keys (each pins its block's page), read every
        // key twice over, and check the kept ones last.
        let mut kept = Vec::new();
        for round in 0..2 {
            for (i, e) in es.iter().enumerate() {
                let got = t.get(&e.key, key_hash(&e.key), u64::MAX).unwrap().unwrap();
                assert_eq!(got.value, e.value, "round {round}, key {i}");
                if round == 0 && i % 500 == 0 {
                    kept.push((i, got.value));
                }
            }
        }
        assert!(cache.used() <= 64 << 10, "{} bytes cached", cache.used());
        for (i, v) in &kept {
            assert_eq!(v, &es[*i].value, "kept value of key {i} changed");
        }
        let pinned = cache.pages().unwrap().taken();
        drop(kept);
        assert!(cache.pages().unwrap().taken() < pinned);
    }
}

/// An open table registers the heap bytes it keeps (index, filter) with its cache and
/// returns them when it drops.
#[test]
fn an_open_table_pins_its_index_and_filter_in_the_cache_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000012.sst");
    let es = entries(3000);
    write_sized(&p, &es, Compression::None, false, 1024);
    let cache = Arc::new(BlockCache::new(1 << 20, 4096));
    let t = Table::open(&StdFs, &p, 1, Some(cache.clone())).unwrap();
    let heap = t.heap_bytes();
    // 3000 keys at 10 bits each, and an index entry for every one of the many blocks.
    assert!(
        heap > 3000 * 10 / 8 + t.block_count() as u64 * 16,
        "{heap} bytes"
    );
    assert_eq!(cache.pinned(), heap);
    let t2 = Table::open(&StdFs, &p, 2, Some(cache.clone())).unwrap();
    assert_eq!(cache.pinned(), 2 * heap);
    drop(t);
    assert_eq!(cache.pinned(), heap);
    drop(t2);
    assert_eq!(cache.pinned(), 0);
}

/// The heap bytes an open table reports (and pins in its cache) count the properties'
/// smallest and largest keys, up to 64 KiB each: they were left out, so a table of 64 KiB
/// keys kept 128 KiB more than it said.
#[test]
fn heap_bytes_count_the_properties_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("000013.sst");
    let es = vec![Entry {
        key: Bytes::from(vec![b'k'; crate::MAX_KEY_LEN]),
        seqno: 9,
        kind: Kind::Value,
        value: Bytes::from_static(b"v"),
    }];
    let props = write(&p, &es, Compression::None);
    assert_eq!(
        props.smallest.len() + props.largest.len(),
        2 * crate::MAX_KEY_LEN
    );
    let cache = Arc::new(BlockCache::new(1 << 20, 4096));
    let t = Table::open(&StdFs, &p, 1, Some(cache.clone())).unwrap();
    let heap = t.heap_bytes();
    // The index's key for its one block, and the properties' smallest and largest.
    assert!(heap >= 3 * crate::MAX_KEY_LEN as u64, "{heap} bytes");
    assert_eq!(cache.pinned(), heap);
}

/// `file` with its metadata block `which` (0 filter, 1 index, 2 properties) replaced by
/// `body` stored with codec `ty`; trailers and footer made valid again.
fn with_meta(file: &[u8], which: usize, body: &[u8], ty: u8) -> Vec<u8> {
    let p = Path::new("t.sst");
    let f = Footer::decode(file, p).unwrap();
    let old = [f.filter, f.index, f.props];
    let mut out = file[..f.filter.offset as usize].to_vec();
    let mut handles = old;
    for (k, h) in old.iter().enumerate() {
        let (s, e) = (h.offset as usize, (h.offset + h.size) as usize);
        let (b, t) = match k == which {
            true => (body, ty),
            false => (&file[s..e], file[e]),
        };
        handles[k] = BlockHandle {
            offset: out.len() as u64,
            size: b.len() as u64,
        };
        out.extend_from_slice(b);
        out.extend_from_slice(&block_trailer(b, t));
    }
    let footer = Footer {
        filter: handles[0],
        index: handles[1],
        props: handles[2],
        format_version: f.format_version,
    };
    out.extend_from_slice(&footer.encode());
    out
}

/// An index and properties rewritten to disagree with the data blocks, checksums intact,
/// are refused at open: properties whose last key is short of the table's (point reads
/// skipped the keys past it: `get` of the last key found nothing while iteration saw it),
/// and an index that leaves the last data block out (with a block count to match; 235 of
/// 300 entries were reachable).
#[test]
fn an_index_or_properties_at_odds_with_the_blocks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sst");
    let es = entries(300);
    write_format(&path, &es, Compression::None, false);
    let file = std::fs::read(&path).unwrap();
    let p = Path::new("t.sst");
    let f = Footer::decode(&file, p).unwrap();
    let meta = |h: BlockHandle| {
        let (s, e) = (h.offset as usize, (h.offset + h.size) as usize);
        (file[s..e].to_vec(), file[e])
    };
    let (pb, _) = meta(f.props);
    let props = TableProps::decode(&pb, p, 0).unwrap();
    let encode = |props: &TableProps| {
        let mut b = Vec::new();
        props.encode(&mut b);
        b
    };
    let refused = |bytes: Vec<u8>, what: &str| {
        std::fs::write(&path, bytes).unwrap();
        let Err(e) = open(&path, false) else {
            panic!("{what}: opened")
        };
        assert!(
            e.is_corruption() && e.to_string().contains("t.sst") && e.to_string().contains(what),
            "{what}: {e}"
        );
    };
    // Unchanged, rewritten: opens.
    std::fs::write(&path, with_meta(&file, 2, &pb, COMPRESSION_NONE)).unwrap();
    assert_finds(&open(&path, false).unwrap(), &es, 7);
    let mut short = props.clone();
    short.largest = es[0].key.to_vec();
    refused(
        with_meta(&file, 2, &encode(&short), COMPRESSION_NONE),
        "last key",
    );
    let mut other_format = props.clone();
    other_format.format_version = if props.format_version == 1 { 2 } else { 1 };
    refused(
        with_meta(&file, 2, &encode(&other_format), COMPRESSION_NONE),
        "properties say format",
    );
    let mut late = props.clone();
    late.smallest = es.last().unwrap().key.to_vec();
    refused(
        with_meta(&file, 2, &encode(&late), COMPRESSION_NONE),
        "first key",
    );
    // The index without its last entry, and the properties counting one block fewer.
    let (ib, ity) = meta(f.index);
    let iblock = codec::decode_block(ity, Bytes::from(ib), p, 0).unwrap();
    let mut bb = block::BlockBuilder::new();
    for i in 0..iblock.len() - 1 {
        let e = iblock.entry(i, p, 0).unwrap();
        bb.add(&e.key, e.seqno, e.kind, &e.value);
    }
    let mut index = Vec::new();
    bb.finish_into(&mut index);
    let fewer = with_meta(&file, 1, &index, COMPRESSION_NONE);
    let mut one_less = props.clone();
    one_less.data_blocks -= 1;
    refused(
        with_meta(&fewer, 2, &encode(&one_less), COMPRESSION_NONE),
        "index",
    );
}
