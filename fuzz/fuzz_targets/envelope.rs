//! The envelope decoder on arbitrary bytes, with and without a key (see
//! `carta_dr_core::fuzzing::envelope` for the mode byte and the invariants checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    carta_dr_core::fuzzing::envelope(data);
});
