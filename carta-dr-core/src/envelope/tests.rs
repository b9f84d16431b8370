//! Unit tests of the envelope; the exhaustive tamper tests are in `tests/envelope_tamper.rs`.

use super::*;

#[test]
fn round_trip_small() {
    let data = b"hello envelope".repeat(10);
    for opts in [
        EnvelopeOptions::default(),
        EnvelopeOptions::uncompressed().with_chunk_size(16),
        EnvelopeOptions::zstd(1)
            .with_chunk_size(32)
            .with_key(Arc::new(Key::from_bytes([3; 32]))),
    ] {
        let sealed = seal(&opts, &data).unwrap();
        let key = opts.key.as_deref();
        assert_eq!(open("t", &sealed, key).unwrap(), data);
    }
}
