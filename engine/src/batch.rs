//! Write batches: a group of puts and deletes applied atomically, under one contiguous range
//! of sequence numbers, whatever partitions the keys fall in.

use std::path::Path;

use bytes::Bytes;

use crate::coding::{put_u32, put_u64, put_varint, Decoder};
use crate::error::{Error, Result};
use crate::types::{Kind, MAX_SEQNO};

/// Largest key accepted.
pub const MAX_KEY_LEN: usize = 64 << 10;
/// Largest value accepted.
pub const MAX_VALUE_LEN: usize = 64 << 20;
/// Largest encoded batch accepted (one WAL record).
pub const MAX_BATCH_LEN: usize = 256 << 20;

/// An atomic group of writes.
///
/// ```
/// let mut b = sluice::WriteBatch::new();
/// b.put("alice", "90").put("bob", "110").delete("carol");
/// assert_eq!(b.len(), 3);
/// ```
#[derive(Clone, Default, Debug)]
pub struct WriteBatch {
    rep: Vec<u8>,
    count: u32,
    max_key: usize,
    max_value: usize,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// A batch whose buffer holds `bytes` of encoded operations without growing.
    pub fn with_capacity(bytes: usize) -> WriteBatch {
        WriteBatch {
            rep: Vec::with_capacity(bytes),
            ..WriteBatch::default()
        }
    }

    /// Encoded size of one put: kind, two varint lengths, key, value.
    pub(crate) fn put_size(key: usize, value: usize) -> usize {
        1 + varint_len(key as u64) + key + varint_len(value as u64) + value
    }

    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        let (k, v) = (key.as_ref(), value.as_ref());
        // On an empty batch this allocates exactly one put (the common single-put batch,
        // whose buffer the memtable keeps); later puts grow it geometrically.
        self.rep.reserve(Self::put_size(k.len(), v.len()));
        self.rep.push(Kind::Value as u8);
        put_varint(&mut self.rep, k.len() as u64);
        self.rep.extend_from_slice(k);
        put_varint(&mut self.rep, v.len() as u64);
        self.rep.extend_from_slice(v);
        self.count = self.count.saturating_add(1);
        self.max_key = self.max_key.max(k.len());
        self.max_value = self.max_value.max(v.len());
        self
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        let k = key.as_ref();
        self.rep.reserve(1 + varint_len(k.len() as u64) + k.len());
        self.rep.push(Kind::Delete as u8);
        put_varint(&mut self.rep, k.len() as u64);
        self.rep.extend_from_slice(k);
        self.count = self.count.saturating_add(1);
        self.max_key = self.max_key.max(k.len());
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn clear(&mut self) {
        self.rep.clear();
        self.count = 0;
        self.max_key = 0;
        self.max_value = 0;
    }

    /// Encoded size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.rep.len()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_key > MAX_KEY_LEN {
            return Err(Error::KeyTooLarge {
                len: self.max_key,
                max: MAX_KEY_LEN,
            });
        }
        if self.max_value > MAX_VALUE_LEN {
            return Err(Error::ValueTooLarge {
                len: self.max_value,
                max: MAX_VALUE_LEN,
            });
        }
        if self.rep.len() > MAX_BATCH_LEN {
            return Err(Error::BatchTooLarge {
                len: self.rep.len(),
                max: MAX_BATCH_LEN,
            });
        }
        Ok(())
    }

    /// The WAL payload for this batch at `seqno`: `[seqno u64][count u32][ops]`.
    pub(crate) fn encode_wal(&self, seqno: u64, out: &mut Vec<u8>) {
        put_u64(out, seqno);
        put_u32(out, self.count);
        out.extend_from_slice(&self.rep);
    }

    pub(crate) fn ops_bytes(&self) -> &[u8] {
        &self.rep
    }

    /// Appends an operation no decoder accepts (an unknown kind), as a bug in the batch's
    /// encoding would.
    #[cfg(test)]
    pub(crate) fn push_undecodable_op(&mut self) {
        self.rep.push(7);
        self.count += 1;
    }

    /// Iterates the operations as (kind, key, value) slices of `rep`.
    pub(crate) fn for_each_op<'a>(
        rep: &'a [u8],
        path: &Path,
        base: u64,
        mut f: impl FnMut(Kind, &'a [u8], &'a [u8]),
    ) -> Result<u32> {
        let mut d = Decoder::new(rep, path, base);
        let mut n = 0u32;
        while !d.is_empty() {
            let at = d.offset();
            let kind = match d.u8("batch op kind")? {
                0 => Kind::Delete,
                1 => Kind::Value,
                k => {
                    return Err(Error::corruption(
                        path,
                        at,
                        format!("bad batch op kind {k}"),
                    ))
                }
            };
            let klen = d.len(MAX_KEY_LEN, "batch key length")?;
            let kstart = rep.len() - d.remaining();
            d.take(klen, "batch key")?;
            let key = &rep[kstart..kstart + klen];
            let value = if kind == Kind::Value {
                let vlen = d.len(MAX_VALUE_LEN, "batch value length")?;
                let vstart = rep.len() - d.remaining();
                d.take(vlen, "batch value")?;
                &rep[vstart..vstart + vlen]
            } else {
                &[]
            };
            f(kind, key, value);
            n += 1;
        }
        Ok(n)
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A batch as decoded from a WAL record.
pub(crate) struct WalBatch {
    pub seqno: u64,
    pub count: u32,
    pub ops: Bytes,
}

/// One WAL record: a write batch; the successor record that ends a WAL rotated away from,
/// naming the WAL that continues the log; or the record saying every earlier WAL of the
/// chain is durable, which a WAL holds before its first synced write (format version 3:
/// earlier WALs are synced in the background, see `Inner::rotate`). The last two are a batch
/// header with seqno 0 and count 0 (never a valid batch), the successor's followed by its
/// file number, so no batch can be read as either.
pub(crate) enum WalEntry {
    Batch(WalBatch),
    Successor(u64),
    EarlierDurable,
}

const SUCCESSOR_LEN: usize = 20;
const EARLIER_DURABLE_LEN: usize = 12;

/// Whether a WAL record's payload is the record saying every earlier WAL is durable.
pub(crate) fn is_wal_earlier_durable(payload: &[u8]) -> bool {
    payload.len() == EARLIER_DURABLE_LEN && payload.iter().all(|&b| b == 0)
}

/// Whether a WAL record's payload is a write batch (not a successor or durability record).
pub(crate) fn is_wal_batch(payload: &[u8]) -> bool {
    !(payload.len() >= 12 && payload[..12].iter().all(|&b| b == 0))
}

/// Encodes the record saying every earlier WAL is durable.
pub(crate) fn encode_wal_earlier_durable(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; EARLIER_DURABLE_LEN]);
}

/// Encodes the successor record naming WAL `next`.
pub(crate) fn encode_wal_successor(next: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&next.to_le_bytes());
}

impl WalEntry {
    /// Decodes the payload of the record at `record` in its file, whose payload starts at
    /// `payload_at` (errors about the record name the first, errors inside it the second).
    pub fn decode(payload: &Bytes, path: &Path, record: u64, payload_at: u64) -> Result<WalEntry> {
        if !is_wal_batch(payload) {
            let at = record;
            if payload.len() == EARLIER_DURABLE_LEN {
                return Ok(WalEntry::EarlierDurable);
            }
            if payload.len() != SUCCESSOR_LEN {
                return Err(Error::corruption(
                    path,
                    at,
                    format!("successor record of {} bytes", payload.len()),
                ));
            }
            let next = u64::from_le_bytes(payload[12..20].try_into().expect("8 bytes"));
            if next == 0 || next > crate::util::MAX_FILE_NUMBER {
                return Err(Error::corruption(
                    path,
                    at,
                    format!("successor WAL number {next} is out of range"),
                ));
            }
            return Ok(WalEntry::Successor(next));
        }
        WalBatch::decode(payload, path, record, payload_at).map(WalEntry::Batch)
    }
}

impl WalBatch {
    fn decode(payload: &Bytes, path: &Path, record: u64, payload_at: u64) -> Result<WalBatch> {
        let mut d = Decoder::new(payload, path, payload_at);
        let seqno = d.u64("batch seqno")?;
        let count = d.u32("batch count")?;
        let ops_len = payload.len().saturating_sub(12);
        // Every op takes at least a byte, and seqnos run from 1 to MAX_SEQNO: counts or
        // seqnos beyond that are damage that passed the checksum.
        if count as usize > ops_len
            || seqno == 0
            || seqno > MAX_SEQNO
            || u64::from(count.max(1)) - 1 > MAX_SEQNO - seqno
        {
            return Err(Error::corruption(
                path,
                record,
                format!("batch of {count} ops at seqno {seqno} is out of range"),
            ));
        }
        Ok(WalBatch {
            seqno,
            count,
            ops: payload.slice(12..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_wal_encoding() {
        let mut b = WriteBatch::new();
        b.put("a", "1").delete("b").put("", "");
        let mut wal = Vec::new();
        b.encode_wal(42, &mut wal);
        let wal = Bytes::from(wal);
        let WalEntry::Batch(w) = WalEntry::decode(&wal, Path::new("x"), 0, 12).unwrap() else {
            panic!("a batch decoded as a successor record")
        };
        assert_eq!((w.seqno, w.count), (42, 3));
        let mut ops = Vec::new();
        let n = WriteBatch::for_each_op(&w.ops, Path::new("x"), 12, |k, key, v| {
            ops.push((k, key, v))
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(ops[0], (Kind::Value, &b"a"[..], &b"1"[..]));
        assert_eq!(ops[1], (Kind::Delete, &b"b"[..], &b""[..]));
        assert_eq!(ops[2], (Kind::Value, &b""[..], &b""[..]));
    }

    #[test]
    fn successor_records_round_trip_and_damage_is_an_error() {
        let mut rec = Vec::new();
        encode_wal_successor(77, &mut rec);
        let rec = Bytes::from(rec);
        assert!(matches!(
            WalEntry::decode(&rec, Path::new("x"), 0, 12).unwrap(),
            WalEntry::Successor(77)
        ));
        // Cut short, too long, or naming no possible file: damage, never a batch.
        for bad in [
            rec.slice(..19),
            Bytes::from([&rec[..], b"x"].concat()),
            Bytes::from([&rec[..12], &0u64.to_le_bytes()[..]].concat()),
            Bytes::from([&rec[..12], &u64::MAX.to_le_bytes()[..]].concat()),
        ] {
            match WalEntry::decode(&bad, Path::new("x"), 0, 12) {
                Err(Error::Corruption { offset: 0, .. }) => {}
                Err(e) => panic!("{} bytes: wrong error {e:?}", bad.len()),
                Ok(_) => panic!("{} bytes decoded", bad.len()),
            }
        }
    }

    #[test]
    fn damaged_ops_are_errors_not_panics() {
        let mut b = WriteBatch::new();
        b.put("key", "value").delete("gone");
        let rep = Bytes::copy_from_slice(b.ops_bytes());
        for i in 0..rep.len() {
            for bit in 0..8 {
                let mut c = rep.to_vec();
                c[i] ^= 1 << bit;
                let _ = WriteBatch::for_each_op(&c, Path::new("x"), 0, |_, _, _| {});
            }
        }
        for n in 0..rep.len() {
            let r = WriteBatch::for_each_op(&rep[..n], Path::new("x"), 0, |_, _, _| {});
            // The first op ("key" -> "value") ends at byte 11: a cut there is a whole op.
            if n > 0 && n != 11 {
                assert!(r.is_err(), "cut at {n}");
            }
        }
    }

    #[test]
    fn oversized_key_and_value_are_refused() {
        let mut b = WriteBatch::new();
        b.put(vec![0u8; MAX_KEY_LEN + 1], "v");
        assert!(matches!(b.validate(), Err(Error::KeyTooLarge { .. })));
        let mut b = WriteBatch::new();
        b.put("k", vec![0u8; MAX_VALUE_LEN + 1]);
        assert!(matches!(b.validate(), Err(Error::ValueTooLarge { .. })));
    }
}
