//! Escaped-text form of byte strings: printable ASCII stays as it is, `\` becomes `\\`, and
//! every other byte becomes `\xNN`. Used by the CLI and by textual partition specs.

/// Renders bytes as escaped text.
pub fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

/// Parses escaped text back into bytes.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = s
                    .get(i + 2..i + 4)
                    .ok_or_else(|| format!("truncated \\x escape at byte {i}"))?;
                let v =
                    hex_byte(hex).ok_or_else(|| format!("bad \\x escape {hex:?} at byte {i}"))?;
                out.push(v);
                i += 4;
            }
            _ => return Err(format!("bad escape at byte {i}")),
        }
    }
    Ok(out)
}

/// Two hex digits as a byte (`from_str_radix` alone also takes a sign: `+f`).
fn hex_byte(h: &str) -> Option<u8> {
    if h.len() != 2 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(h, 16).ok()
}

/// Renders bytes as lowercase hex.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for c in b {
        s.push_str(&format!("{c:02x}"));
    }
    s
}

/// Parses lowercase or uppercase hex.
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("hex string has odd length {}", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(hex_byte)
                .ok_or_else(|| format!("bad hex at position {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unescape(&escape(&all)).unwrap(), all);
        assert_eq!(unhex(&hex(&all)).unwrap(), all);
        assert_eq!(escape(b"a\\b\n"), "a\\\\b\\x0a");
    }

    #[test]
    fn bad_escapes_are_errors() {
        for s in ["\\", "\\x", "\\x4", "\\xzz", "\\q", "\\x+f", "\\x-1"] {
            assert!(unescape(s).is_err(), "{s}");
        }
        assert!(unhex("abc").is_err());
        assert!(unhex("+a").is_err());
        assert!(unhex("zz").is_err());
    }
}
