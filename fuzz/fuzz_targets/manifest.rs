//! PostgreSQL's `backup_manifest` parser on arbitrary bytes (see
//! `carta_dr_core::fuzzing::manifest` for the mode byte and the invariants checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    carta_dr_core::fuzzing::manifest(data);
});
