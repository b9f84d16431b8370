//! A sans-IO streaming reader of the tar archives `BASE_BACKUP` sends.
//!
//! PostgreSQL writes POSIX ustar (`src/port/tar.c`, `tarCreateHeader`): 512-byte headers,
//! octal numeric fields, data padded to 512 bytes, two zero blocks at the end. Long names from
//! other writers are accepted too: pax extended headers (`x`, keys `path`, `linkpath`, `size`)
//! and GNU long names (`L`, `K`). Feed bytes with [`TarReader::feed`]; it yields
//! [`TarEvent`]s whose data slices share the input buffer. Never panics on any input.

use bytes::{Buf, Bytes, BytesMut};
use carta_dr_core::{Error, Result};

/// Tar block size.
pub const BLOCK: usize = 512;
/// Longest pax / GNU long-name record accepted.
const MAX_EXT_HEADER: u64 = 1 << 20;

/// The kind of a tar member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// A member's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// The path, as stored (relative; a trailing `/` of directories is removed).
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Content size (0 for directories and links).
    pub size: u64,
    /// The symlink target.
    pub link_target: Option<String>,
}

/// What the reader found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarEvent {
    /// A member starts.
    Entry(TarEntry),
    /// The next bytes of the current member.
    Data(Bytes),
    /// The current member's data is complete.
    EntryEnd,
    /// The end-of-archive marker was read.
    End,
}

#[derive(Debug)]
enum State {
    Header,
    Data {
        remaining: u64,
        pad: usize,
    },
    Ext {
        kind: u8,
        remaining: u64,
        pad: usize,
        buf: Vec<u8>,
    },
    Pad(usize),
    Done,
}

/// The streaming tar reader.
#[derive(Debug)]
pub struct TarReader {
    state: State,
    header: BytesMut,
    offset: u64,
    long_name: Option<String>,
    long_link: Option<String>,
    pax_size: Option<u64>,
    zero_blocks: u8,
}

impl Default for TarReader {
    fn default() -> Self {
        Self::new()
    }
}

fn octal(field: &[u8], what: &str, offset: u64) -> Result<u64> {
    // GNU base-256: high bit of the first byte set.
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            let mut v: u64 = u64::from(first & 0x7f);
            for &b in field.get(1..).unwrap_or(&[]) {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| {
                        Error::invalid_input(format!("tar {what} at offset {offset} overflows"))
                    })?;
            }
            return Ok(v);
        }
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&s)
        .map_err(|_| Error::invalid_input(format!("tar {what} at offset {offset} is not octal")))?;
    u64::from_str_radix(s, 8).map_err(|_| {
        Error::invalid_input(format!("tar {what} at offset {offset} is not octal: {s:?}"))
    })
}

fn text(field: &[u8]) -> Result<String> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8(field.get(..end).unwrap_or(&[]).to_vec())
        .map_err(|_| Error::invalid_input("tar member name is not UTF-8"))
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

impl TarReader {
    /// A reader at the start of an archive.
    pub fn new() -> Self {
        TarReader {
            state: State::Header,
            header: BytesMut::with_capacity(BLOCK),
            offset: 0,
            long_name: None,
            long_link: None,
            pax_size: None,
            zero_blocks: 0,
        }
    }

    /// Whether the end-of-archive marker has been read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether the reader sits between members (a truncated stream ends elsewhere).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header | State::Done) && self.header.is_empty()
    }

    /// Feeds bytes; appends what they complete to `out`.
    pub fn feed(&mut self, mut data: Bytes, out: &mut Vec<TarEvent>) -> Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => {
                    // Trailing zero padding after the end marker is allowed.
                    if data.iter().any(|b| *b != 0) {
                        return Err(Error::invalid_input(format!(
                            "tar: data after the end-of-archive marker at offset {}",
                            self.offset
                        )));
                    }
                    self.offset += data.len() as u64;
                    return Ok(());
                }
                State::Pad(n) => {
                    let take = (*n).min(data.len());
                    data.advance(take);
                    self.offset += take as u64;
                    *n -= take;
                    if *n == 0 {
                        self.state = State::Header;
                    }
                }
                State::Data { remaining, pad } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    if take > 0 {
                        out.push(TarEvent::Data(data.split_to(take)));
                        self.offset += take as u64;
                        *remaining -= take as u64;
                    }
                    if *remaining == 0 {
                        out.push(TarEvent::EntryEnd);
                        let p = *pad;
                        self.state = if p == 0 { State::Header } else { State::Pad(p) };
                    }
                }
                State::Ext {
                    kind,
                    remaining,
                    pad,
                    buf,
                } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    buf.extend_from_slice(&data.split_to(take));
                    self.offset += take as u64;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        let (k, p, b) = (*kind, *pad, std::mem::take(buf));
                        self.apply_ext(k, &b)?;
                        self.state = if p == 0 { State::Header } else { State::Pad(p) };
                    }
                }
                State::Header => {
                    let want = BLOCK - self.header.len();
                    let take = want.min(data.len());
                    self.header.extend_from_slice(&data.split_to(take));
                    if self.header.len() == BLOCK {
                        let h = self.header.split().freeze();
                        let start = self.offset;
                        self.offset += BLOCK as u64;
                        self.header_block(&h, start, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_ext(&mut self, kind: u8, buf: &[u8]) -> Result<()> {
        match kind {
            b'L' => self.long_name = Some(text(buf)?),
            b'K' => self.long_link = Some(text(buf)?),
            b'x' => {
                // Records: "<len> <key>=<value>\n".
                let mut rest = buf;
                while !rest.is_empty() {
                    let sp = rest.iter().position(|b| *b == b' ').ok_or_else(|| {
                        Error::invalid_input(format!("tar pax record near offset {}", self.offset))
                    })?;
                    let len: usize = std::str::from_utf8(rest.get(..sp).unwrap_or(&[]))
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .filter(|l| *l > sp + 1 && *l <= rest.len())
                        .ok_or_else(|| {
                            Error::invalid_input(format!(
                                "tar pax record length near offset {}",
                                self.offset
                            ))
                        })?;
                    let rec = rest.get(sp + 1..len - 1).unwrap_or(&[]);
                    rest = rest.get(len..).unwrap_or(&[]);
                    let eq = match rec.iter().position(|b| *b == b'=') {
                        Some(e) => e,
                        None => continue,
                    };
                    let key = rec.get(..eq).unwrap_or(&[]);
                    let val = rec.get(eq + 1..).unwrap_or(&[]);
                    match key {
                        b"path" => self.long_name = Some(text(val)?),
                        b"linkpath" => self.long_link = Some(text(val)?),
                        b"size" => {
                            self.pax_size =
                                std::str::from_utf8(val).ok().and_then(|s| s.parse().ok())
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn header_block(&mut self, h: &[u8], start: u64, out: &mut Vec<TarEvent>) -> Result<()> {
        if h.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks >= 2 {
                self.state = State::Done;
                out.push(TarEvent::End);
            }
            return Ok(());
        }
        if self.zero_blocks > 0 {
            return Err(Error::invalid_input(format!(
                "tar: lone zero block before offset {start}"
            )));
        }
        let field = |a: usize, b: usize| h.get(a..b).unwrap_or(&[]);
        let stored_sum = octal(field(148, 156), "checksum", start)?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        if sum != stored_sum {
            return Err(Error::invalid_input(format!(
                "tar header checksum mismatch at offset {start}: stored {stored_sum}, computed {sum}"
            )));
        }
        let typeflag = h.get(156).copied().unwrap_or(0);
        let mut size = octal(field(124, 136), "size", start)?;
        match typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                if size > MAX_EXT_HEADER {
                    return Err(Error::invalid_input(format!(
                        "tar extended header of {size} bytes at offset {start}"
                    )));
                }
                let pad = padding(size);
                if typeflag == b'g' {
                    // Global pax headers carry nothing this reader needs.
                    self.state = State::Ext {
                        kind: b'g',
                        remaining: size,
                        pad,
                        buf: Vec::new(),
                    };
                } else {
                    self.state = State::Ext {
                        kind: typeflag,
                        remaining: size,
                        pad,
                        buf: Vec::with_capacity(size as usize),
                    };
                }
                if size == 0 {
                    self.state = if pad == 0 {
                        State::Header
                    } else {
                        State::Pad(pad)
                    };
                }
                return Ok(());
            }
            _ => {}
        }
        let magic = field(257, 263);
        let mut name = text(field(0, 100))?;
        if magic == b"ustar\0" {
            let prefix = text(field(345, 500))?;
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(n) = self.long_name.take() {
            name = n;
        }
        let mut link = text(field(157, 257))?;
        if let Some(l) = self.long_link.take() {
            link = l;
        }
        if let Some(s) = self.pax_size.take() {
            size = s;
        }
        let mode = octal(field(100, 108), "mode", start)? as u32 & 0o7777;
        let mtime = octal(field(136, 148), "mtime", start)? as i64;
        let kind = match typeflag {
            b'0' | 0 | b'7' => EntryKind::File,
            b'5' => EntryKind::Dir,
            b'2' => EntryKind::Symlink,
            other => {
                return Err(Error::invalid_input(format!(
                    "tar member {name:?} at offset {start} has unsupported type {:?}",
                    other as char
                )))
            }
        };
        let name = name.trim_end_matches('/').to_string();
        if name.is_empty() {
            return Err(Error::invalid_input(format!(
                "tar member at offset {start} has an empty name"
            )));
        }
        let (size, link_target) = match kind {
            EntryKind::File => (size, None),
            EntryKind::Dir => (0, None),
            EntryKind::Symlink => (0, Some(link)),
        };
        out.push(TarEvent::Entry(TarEntry {
            path: name,
            kind,
            mode,
            mtime,
            size,
            link_target,
        }));
        if size == 0 {
            out.push(TarEvent::EntryEnd);
            self.state = State::Header;
        } else {
            self.state = State::Data {
                remaining: size,
                pad: padding(size),
            };
        }
        Ok(())
    }
}

/// Builds one ustar header (for tests and fixtures).
pub fn ustar_header(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let put = |h: &mut [u8; BLOCK], at: usize, s: &[u8]| {
        for (i, b) in s.iter().enumerate() {
            if let Some(x) = h.get_mut(at + i) {
                *x = *b;
            }
        }
    };
    put(&mut h, 0, &name.as_bytes()[..name.len().min(100)]);
    put(&mut h, 100, b"0000600\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"00000000000\0");
    put(&mut h, 156, &[typeflag]);
    put(&mut h, 157, &link.as_bytes()[..link.len().min(100)]);
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&ustar_header("base", b'5', 0, ""));
        a.extend_from_slice(&ustar_header("base/1", b'0', 700, ""));
        a.extend(std::iter::repeat_n(7u8, 700));
        a.extend(std::iter::repeat_n(0u8, padding(700)));
        let long = "x/".repeat(80) + "file";
        let rec = format!(" path={long}\n");
        let rec = format!("{}{}", rec.len() + 3, rec);
        a.extend_from_slice(&ustar_header("pax", b'x', rec.len() as u64, ""));
        a.extend_from_slice(rec.as_bytes());
        a.extend(std::iter::repeat_n(0u8, padding(rec.len() as u64)));
        a.extend_from_slice(&ustar_header("short", b'0', 3, ""));
        a.extend_from_slice(b"abc");
        a.extend(std::iter::repeat_n(0u8, padding(3)));
        a.extend_from_slice(&ustar_header("pg_tblspc/16384", b'2', 0, "/srv/ts"));
        a.extend(std::iter::repeat_n(0u8, 1024));
        a
    }

    fn read_all(a: &[u8], step: usize) -> Vec<TarEvent> {
        let mut r = TarReader::new();
        let mut out = Vec::new();
        for c in a.chunks(step) {
            r.feed(Bytes::copy_from_slice(c), &mut out).unwrap();
        }
        assert!(r.is_done());
        out
    }

    #[test]
    fn reads_members_at_any_split() {
        let a = archive();
        for step in [1, 7, 512, 513, 100_000] {
            let ev = read_all(&a, step);
            let entries: Vec<_> = ev
                .iter()
                .filter_map(|e| match e {
                    TarEvent::Entry(e) => Some(e.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(entries.len(), 4);
            assert_eq!(entries[0].kind, EntryKind::Dir);
            assert_eq!(entries[1].size, 700);
            assert!(entries[2].path.ends_with("/file") && entries[2].path.len() > 100);
            assert_eq!(entries[3].link_target.as_deref(), Some("/srv/ts"));
            let data: usize = ev
                .iter()
                .map(|e| match e {
                    TarEvent::Data(d) => d.len(),
                    _ => 0,
                })
                .sum();
            assert_eq!(data, 703);
            assert_eq!(ev.last(), Some(&TarEvent::End));
        }
    }

    #[test]
    fn rejects_bad_checksum_and_never_panics() {
        let mut a = archive();
        a[600] ^= 1; // inside the second header
        let mut r = TarReader::new();
        assert!(r.feed(Bytes::from(a.clone()), &mut Vec::new()).is_err());
        // Arbitrary mutations never panic.
        let base = archive();
        for i in (0..base.len()).step_by(37) {
            let mut m = base.clone();
            m[i] = m[i].wrapping_add(0x55);
            let _ = TarReader::new().feed(Bytes::from(m), &mut Vec::new());
        }
    }
}
