//! Writes the seed corpus (`corpus/<target>/seed-*`) from
//! `carta_dr_core::fuzzing::seed_corpus`. Run from `fuzz/`: `cargo run --features seed --bin write_seed_corpus`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in carta_dr_core::fuzzing::seed_corpus() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
