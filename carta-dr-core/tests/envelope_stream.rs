//! A large object streams through `Sealer` -> OS pipe -> `Opener` with bounded memory.
//!
//! The default run streams 256 MiB (quick in a debug build); set
//! `CARTA_ENVELOPE_STREAM_MIB=2048` for the 2 GiB run. Memory is measured two ways: the
//! Rust heap (a counting global allocator: current and peak bytes) and the process's peak
//! resident set (`VmHWM`, which also covers zstd's C allocations). Both must stay far below
//! the object's size: a few chunks, whatever the size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use carta_dr_core::envelope::{EnvelopeOptions, Key, Opener, Sealer, DEFAULT_CHUNK_SIZE};
use carta_dr_core::fuzzing::WalLikeReader;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let d = new_size - layout.size();
                let now = CURRENT.fetch_add(d, Ordering::Relaxed) + d;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn vm_hwm_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kb * 1024
}

fn stream(total: u64, key: Option<Arc<Key>>) {
    let opts = EnvelopeOptions {
        key: key.clone(),
        ..EnvelopeOptions::zstd(1)
    };
    let (reader, writer) = std::io::pipe().expect("pipe");
    let heap_before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(heap_before, Ordering::Relaxed);

    let producer = std::thread::spawn(move || {
        let mut src = WalLikeReader::new(total, 42);
        let mut sealer = Sealer::new(&opts, writer).expect("sealer");
        let copied = std::io::copy(&mut src, &mut sealer).expect("seal");
        let (_writer, stats) = sealer.finish().expect("finish");
        assert_eq!(copied, total);
        stats
    });

    let mut opener = Opener::new("big-object", reader, key.as_deref());
    let mut buf = vec![0u8; 256 << 10];
    let mut expected = WalLikeReader::new(total, 42);
    let mut want = vec![0u8; buf.len()];
    let mut got_total = 0u64;
    let mut crc = 0u32;
    loop {
        let n = opener.read(&mut buf).expect("open");
        if n == 0 {
            break;
        }
        expected.read_exact(&mut want[..n]).expect("generator");
        assert!(buf[..n] == want[..n], "content differs at byte {got_total}");
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        got_total += n as u64;
    }
    let sealed = producer.join().expect("producer thread");
    let opened = opener.stats();
    let heap_peak = PEAK.load(Ordering::Relaxed) - heap_before;

    assert_eq!(got_total, total);
    assert_eq!(sealed.raw_len, total);
    assert_eq!(opened, sealed, "decoder and encoder statistics agree");
    assert_eq!(sealed.crc32c, crc);
    assert_eq!(sealed.chunks, total.div_ceil(DEFAULT_CHUNK_SIZE as u64));
    eprintln!(
        "streamed {} MiB (stored {} MiB, {} chunks, key: {}); heap peak {:.1} MiB; VmHWM {:.1} MiB",
        total >> 20,
        sealed.stored_len >> 20,
        sealed.chunks,
        key.is_some(),
        heap_peak as f64 / 1048576.0,
        vm_hwm_bytes() as f64 / 1048576.0
    );
    // Sealer: one pending chunk + one frame; Opener: one frame + read-ahead + one chunk;
    // test buffers: 512 KiB. About 5 MiB; 12 MiB leaves room for allocator slack.
    assert!(
        heap_peak < 12 << 20,
        "heap peak {heap_peak} bytes while streaming {total} bytes"
    );
}

#[test]
fn large_object_streams_with_bounded_memory() {
    let mib: u64 = std::env::var("CARTA_ENVELOPE_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let total = (mib << 20) + 12_345; // not a multiple of the chunk size
    stream(total, None);
    stream(total / 4, Some(Arc::new(Key::from_bytes([0x11; 32]))));
    // Peak resident memory of the whole test process (test harness, zstd contexts, both
    // threads' buffers) stays far below the streamed size.
    let hwm = vm_hwm_bytes();
    assert!(hwm < 96 << 20, "VmHWM {hwm} bytes");
}
