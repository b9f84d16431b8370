//! Damaging files the way disks, networks and operators do, to prove that damage is detected.
//!
//! Each helper panics when the file cannot be read or written (these are test helpers).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Flips bit `bit` (0..8) of the byte at `offset`.
///
/// # Panics
///
/// When the file is shorter than `offset + 1` bytes or cannot be written.
pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut b))
        .unwrap_or_else(|e| panic!("cannot read byte {offset} of {}: {e}", path.display()));
    b[0] ^= 1 << (bit % 8);
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(&b))
        .and_then(|_| f.sync_all())
        .unwrap_or_else(|e| panic!("cannot write byte {offset} of {}: {e}", path.display()));
}

/// Cuts the file to its first `len` bytes (a torn write).
///
/// # Panics
///
/// When the file cannot be opened or truncated.
pub fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len).and_then(|_| f.sync_all()))
        .unwrap_or_else(|e| panic!("cannot truncate {} to {len}: {e}", path.display()));
}

/// Overwrites `len` bytes at `offset` with zeros (a lost or zeroed block).
///
/// # Panics
///
/// When the file cannot be written.
pub fn zero_range(path: &Path, offset: u64, len: usize) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(&vec![0u8; len]))
        .and_then(|_| f.sync_all())
        .unwrap_or_else(|e| {
            panic!(
                "cannot zero {len} bytes at {offset} of {}: {e}",
                path.display()
            )
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_change_exactly_what_they_say() {
        let dir = crate::scratch_dir("corrupt");
        let p = dir.path().join("f");
        std::fs::write(&p, [0u8, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        flip_bit(&p, 2, 7);
        assert_eq!(std::fs::read(&p).unwrap(), [0, 1, 0x82, 3, 4, 5, 6, 7]);
        zero_range(&p, 4, 2);
        assert_eq!(std::fs::read(&p).unwrap(), [0, 1, 0x82, 3, 0, 0, 6, 7]);
        truncate(&p, 3);
        assert_eq!(std::fs::read(&p).unwrap(), [0, 1, 0x82]);
    }
}
